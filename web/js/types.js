// Socket types: ComfyUI's link rule and the colours sockets and links are drawn in.

function normalize(type) {
  return Array.isArray(type) ? "COMBO" : type;
}

/** Equal, "*" on either side, or overlapping comma-separated unions (ComfyUI's rule). */
export function typesCompatible(outputType, inputType) {
  const out = normalize(outputType);
  const inp = normalize(inputType);
  if (out === inp || out === "*" || inp === "*") return true;
  if (typeof out !== "string" || typeof inp !== "string") return false;
  const wanted = new Set(inp.split(","));
  return out.split(",").some((part) => wanted.has(part));
}

const PALETTE = {
  MODEL: "#b39ddb",
  CLIP: "#ffd500",
  VAE: "#ff6e6e",
  CONDITIONING: "#ffa931",
  LATENT: "#ff9cf9",
  IMAGE: "#64b5f6",
  MASK: "#81c784",
  CONTROL_NET: "#00d78d",
  CLIP_VISION: "#a8dadc",
  CLIP_VISION_OUTPUT: "#ad7452",
  STYLE_MODEL: "#c2ffae",
  UPSCALE_MODEL: "#a0c4ff",
  SAMPLER: "#ecb4b4",
  SIGMAS: "#cdffcd",
  NOISE: "#b0b0b0",
  GUIDER: "#66ffff",
  INT: "#29b6a6",
  FLOAT: "#aab74f",
  STRING: "#7fbf7f",
  BOOLEAN: "#c090f0",
  COMBO: "#8fa0c0",
  "*": "#c8c8c8",
};

const cache = new Map();

/** A stable colour for any type name: the palette, else a hue hashed from the name. */
export function typeColor(type) {
  const key = normalize(type) ?? "*";
  if (PALETTE[key]) return PALETTE[key];
  let color = cache.get(key);
  if (!color) {
    const first = String(key).split(",")[0];
    if (PALETTE[first]) {
      color = PALETTE[first];
    } else {
      let hash = 0;
      for (const ch of String(key)) hash = (hash * 31 + ch.charCodeAt(0)) | 0;
      color = `hsl(${Math.abs(hash) % 360}, 55%, 62%)`;
    }
    cache.set(key, color);
  }
  return color;
}
