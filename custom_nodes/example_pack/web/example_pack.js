// Served at /extensions/example_pack/example_pack.js and imported by the editor.
// It only exports a constant: a place to start, with no side effects.
export const EXAMPLE_PACK = Object.freeze({ name: "example_pack", nodes: ["TextCase", "ShowText"] });
