// Talking to the server: JSON over HTTP (ComfyUI's /api routes) and the /ws websocket, which
// reconnects by itself with a growing delay when the server goes away.

const BINARY_PREVIEW = 1;
const BINARY_PREVIEW_META = 4;
const FORMATS = { 1: "image/jpeg", 2: "image/png" };

export class ApiError extends Error {
  constructor(status, body, message) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

/** The image a LoadImage widget value names: "a/b.png [output]" -> {filename, subfolder, type}. */
export function imageRef(value) {
  let name = String(value);
  let type = "input";
  const m = /^(.*) \[(input|output|temp)\]$/.exec(name);
  if (m) {
    name = m[1];
    type = m[2];
  }
  const cut = name.lastIndexOf("/");
  return { filename: cut >= 0 ? name.slice(cut + 1) : name, subfolder: cut >= 0 ? name.slice(0, cut) : "", type };
}

function newClientId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export class Api extends EventTarget {
  constructor(base = "") {
    super();
    this.base = base;
    // one id per tab, kept across reloads so a reloaded page still gets its prompt's events
    this.clientId = sessionStorage.getItem("lg.clientId") || newClientId();
    sessionStorage.setItem("lg.clientId", this.clientId);
    this.socket = null;
    this.state = "disconnected";
    this.retryDelay = 250;
    this.everConnected = false;
    this.closed = false;
  }

  url(path) {
    return `${this.base}/api${path}`;
  }

  async request(path, { method = "GET", body, json = true } = {}) {
    const init = { method, headers: {} };
    if (body !== undefined) {
      if (body instanceof FormData || typeof body === "string") init.body = body; // a string is sent as it is
      else {
        init.body = JSON.stringify(body);
        init.headers["Content-Type"] = "application/json";
      }
    }
    const response = await fetch(this.url(path), init);
    const text = await response.text();
    let doc = null;
    if ((json || !response.ok) && text) { // errors are JSON whatever the route returns
      try {
        doc = JSON.parse(text);
      } catch {
        doc = null;
      }
    }
    if (!response.ok) {
      const message = doc?.error?.message || doc?.message || `${method} ${path}: HTTP ${response.status}`;
      throw new ApiError(response.status, doc, message);
    }
    return json ? doc : text;
  }

  objectInfo() {
    return this.request("/object_info");
  }

  extensions() {
    return this.request("/extensions");
  }

  /** POST /prompt; resolves {prompt_id, number, node_errors} or throws ApiError (body = 400 doc). */
  queuePrompt(prompt, { workflow = null, front = false } = {}) {
    const body = { prompt, client_id: this.clientId };
    if (workflow) body.extra_data = { extra_pnginfo: { workflow } };
    if (front) body.front = true;
    return this.request("/prompt", { method: "POST", body });
  }

  queue() {
    return this.request("/queue");
  }

  history(maxItems = 64) {
    return this.request(`/history?max_items=${maxItems}`);
  }

  deletePending(ids) {
    return this.request("/queue", { method: "POST", body: { delete: ids } });
  }

  clearPending() {
    return this.request("/queue", { method: "POST", body: { clear: true } });
  }

  deleteHistory(ids) {
    return this.request("/history", { method: "POST", body: { delete: ids } });
  }

  clearHistory() {
    return this.request("/history", { method: "POST", body: { clear: true } });
  }

  interrupt(promptId = null) {
    return this.request("/interrupt", { method: "POST", body: promptId ? { prompt_id: promptId } : {} });
  }

  // -- the user's settings and files on the server (ComfyUI's /settings and /userdata) ---------
  settings() {
    return this.request("/settings");
  }

  storeSetting(id, value) {
    return this.request(`/settings/${encodeURIComponent(id)}`, { method: "POST", body: JSON.stringify(value), json: false });
  }

  /** Files under a folder of the user's data, with {path, size, modified}; [] when it does not exist yet. */
  async listUserData(dir) {
    try {
      return await this.request(`/userdata?dir=${encodeURIComponent(dir)}&recurse=true&full_info=true`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return [];
      throw err;
    }
  }

  async userData(path) {
    const text = await this.request(`/userdata/${encodeURIComponent(path)}`, { json: false });
    return JSON.parse(text);
  }

  storeUserData(path, text, { overwrite = true } = {}) {
    return this.request(`/userdata/${encodeURIComponent(path)}?overwrite=${overwrite}`, { method: "POST", body: text });
  }

  moveUserData(path, dest, { overwrite = false } = {}) {
    return this.request(`/userdata/${encodeURIComponent(path)}/move/${encodeURIComponent(dest)}?overwrite=${overwrite}`,
      { method: "POST" });
  }

  deleteUserData(path) {
    return this.request(`/userdata/${encodeURIComponent(path)}`, { method: "DELETE", json: false });
  }

  async uploadImage(file, { overwrite = false, type = "input", subfolder = "" } = {}) {
    const form = new FormData();
    form.append("image", file, file.name || "pasted.png");
    form.append("type", type);
    if (subfolder) form.append("subfolder", subfolder);
    if (overwrite) form.append("overwrite", "true");
    return this.request("/upload/image", { method: "POST", body: form });
  }

  viewUrl({ filename, subfolder = "", type = "output" }, extra = "") {
    const q = new URLSearchParams({ filename, subfolder: subfolder || "", type: type || "output" });
    return `${this.url("/view")}?${q}${extra}`;
  }

  /** A LoadImage widget value ("dir/name.png" or "name.png [output]") as a /view URL. */
  inputImageUrl(value) {
    return this.viewUrl(imageRef(value));
  }

  // -- websocket ------------------------------------------------------------------------------
  connect() {
    this.closed = false;
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${proto}//${location.host}${this.base}/ws?clientId=${encodeURIComponent(this.clientId)}`;
    let socket;
    try {
      socket = new WebSocket(url);
    } catch {
      this.scheduleReconnect();
      return;
    }
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    this.setState(this.everConnected ? "reconnecting" : "connecting");
    socket.addEventListener("open", () => {
      socket.send(JSON.stringify({ type: "feature_flags", data: { supports_preview_metadata: true } }));
      const again = this.everConnected;
      this.everConnected = true;
      this.retryDelay = 250;
      this.setState("connected");
      if (again) this.dispatchEvent(new CustomEvent("reconnected"));
    });
    socket.addEventListener("message", (event) => this.onMessage(event));
    socket.addEventListener("close", () => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (!this.closed) this.scheduleReconnect();
    });
    socket.addEventListener("error", () => {
      // a close event follows; reconnecting is handled there
    });
  }

  scheduleReconnect() {
    this.setState(this.everConnected ? "reconnecting" : "disconnected");
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), this.retryDelay);
    this.retryDelay = Math.min(this.retryDelay * 2, 2000);
  }

  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    if (this.socket) this.socket.close();
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("connection", { detail: state }));
  }

  onMessage(event) {
    if (typeof event.data === "string") {
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        return;
      }
      if (msg && typeof msg.type === "string") {
        this.dispatchEvent(new CustomEvent("message", { detail: { type: msg.type, data: msg.data || {} } }));
      }
      return;
    }
    const buffer = event.data;
    if (!(buffer instanceof ArrayBuffer) || buffer.byteLength < 8) return;
    const view = new DataView(buffer);
    const kind = view.getUint32(0);
    if (kind === BINARY_PREVIEW) {
      const mime = FORMATS[view.getUint32(4)] || "image/jpeg";
      this.dispatchEvent(new CustomEvent("preview", { detail: { blob: new Blob([buffer.slice(8)], { type: mime }), meta: null } }));
    } else if (kind === BINARY_PREVIEW_META) {
      const length = view.getUint32(4);
      let meta = {};
      try {
        meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, length)));
      } catch {
        meta = {};
      }
      const blob = new Blob([buffer.slice(8 + length)], { type: meta.image_type || "image/jpeg" });
      this.dispatchEvent(new CustomEvent("preview", { detail: { blob, meta } }));
    }
  }
}
