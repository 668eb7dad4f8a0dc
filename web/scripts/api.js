// For custom node web extensions: `import { api } from "../../scripts/api.js"`.
// fetchApi(route, options) calls the server's /api routes; websocket events are re-dispatched
// here by their ComfyUI names (status, executing, progress, executed, ...).

class ExtensionApi extends EventTarget {
  apiURL(route) {
    return `/api${route}`;
  }

  fileURL(route) {
    return route;
  }

  fetchApi(route, options = {}) {
    return fetch(this.apiURL(route), options);
  }

  get clientId() {
    return globalThis.lgApp ? globalThis.lgApp.api.clientId : null;
  }
}

export const api = new ExtensionApi();
globalThis.__lgExtensionApi = api;
