// Undo and redo as whole-graph snapshots (the UI-format JSON). Simple and exact: every
// committed change records the graph if it differs from the last snapshot.

const LIMIT = 80;

export class UndoStack {
  constructor({ snapshot, restore }) {
    this.snapshot = snapshot; // () => string
    this.restore = restore; // (string) => void
    this.reset();
  }

  reset() {
    this.states = [this.snapshot()];
    this.index = 0;
  }

  record() {
    const state = this.snapshot();
    if (state === this.states[this.index]) return false;
    this.states.splice(this.index + 1);
    this.states.push(state);
    if (this.states.length > LIMIT) this.states.shift();
    this.index = this.states.length - 1;
    return true;
  }

  get canUndo() {
    return this.index > 0;
  }

  get canRedo() {
    return this.index < this.states.length - 1;
  }

  undo() {
    this.record(); // changes not yet recorded become a step of their own
    if (!this.canUndo) return false;
    this.index -= 1;
    this.restore(this.states[this.index]);
    return true;
  }

  redo() {
    if (!this.canRedo) return false;
    this.index += 1;
    this.restore(this.states[this.index]);
    return true;
  }
}
