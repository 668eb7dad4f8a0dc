// The workflow a first visit opens: ComfyUI's default text-to-image graph (same node ids,
// classes, links and widget values), laid out left to right compactly enough to read in a
// 1280x800 window. When the only checkpoint the server lists is the project's built-in model
// (models_builtin/), the same graph is set up for it: its 64x64 size and a prompt in its
// vocabulary, so the first Queue makes a picture of the prompt.

export const BUILTIN_CHECKPOINT = "latentgraph-shapes-64.safetensors";
const COMFY_DEFAULTS = {
  ckpt: "v1-5-pruned-emaonly-fp16.safetensors", size: 512, cfg: 8,
  positive: "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,", negative: "text, watermark",
};
const BUILTIN_DEFAULTS = {
  ckpt: BUILTIN_CHECKPOINT, size: 64, cfg: 5,
  positive: "a large red circle in the center on a blue background", negative: "",
};

export function onlyBuiltinModel(objectInfo) {
  const names = objectInfo?.CheckpointLoaderSimple?.input?.required?.ckpt_name?.[0];
  return Array.isArray(names) && names.length > 0 && names.every((n) => n === BUILTIN_CHECKPOINT);
}

export function defaultWorkflow(objectInfo = null) {
  const d = onlyBuiltinModel(objectInfo) ? BUILTIN_DEFAULTS : COMFY_DEFAULTS;
  const node = (id, type, pos, size, order, inputs, outputs, widgets) => ({
    id, type, pos, size, flags: {}, order, mode: 0, inputs, outputs,
    properties: { "Node name for S&R": type }, widgets_values: widgets,
  });
  const input = (name, type, link) => ({ name, type, link });
  const output = (name, type, links) => ({ name, type, links, slot_index: 0 });
  return {
    last_node_id: 9,
    last_link_id: 9,
    nodes: [
      node(4, "CheckpointLoaderSimple", [20, 60], [315, 100], 0, [], [
        { name: "MODEL", type: "MODEL", links: [1], slot_index: 0 },
        { name: "CLIP", type: "CLIP", links: [3, 5], slot_index: 1 },
        { name: "VAE", type: "VAE", links: [8], slot_index: 2 },
      ], [d.ckpt]),
      node(5, "EmptyLatentImage", [20, 300], [315, 110], 1, [], [output("LATENT", "LATENT", [2])], [d.size, d.size, 1]),
      node(6, "CLIPTextEncode", [370, 60], [380, 150], 2, [input("clip", "CLIP", 3)],
        [output("CONDITIONING", "CONDITIONING", [4])], [d.positive]),
      node(7, "CLIPTextEncode", [370, 270], [380, 150], 3, [input("clip", "CLIP", 5)],
        [output("CONDITIONING", "CONDITIONING", [6])], [d.negative]),
      node(3, "KSampler", [790, 60], [300, 262], 4, [
        input("model", "MODEL", 1), input("positive", "CONDITIONING", 4), input("negative", "CONDITIONING", 6),
        input("latent_image", "LATENT", 2),
      ], [output("LATENT", "LATENT", [7])], [156680208700286, "randomize", 20, d.cfg, "euler", "normal", 1]),
      node(8, "VAEDecode", [1130, 60], [210, 46], 5, [input("samples", "LATENT", 7), input("vae", "VAE", 8)],
        [output("IMAGE", "IMAGE", [9])], []),
      node(9, "SaveImage", [1130, 170], [340, 340], 6, [input("images", "IMAGE", 9)], [], ["ComfyUI"]),
    ],
    links: [
      [1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 6, 0, "CLIP"], [4, 6, 0, 3, 1, "CONDITIONING"],
      [5, 4, 1, 7, 0, "CLIP"], [6, 7, 0, 3, 2, "CONDITIONING"], [7, 3, 0, 8, 0, "LATENT"], [8, 4, 2, 8, 1, "VAE"],
      [9, 8, 0, 9, 0, "IMAGE"],
    ],
    groups: [],
    config: {},
    extra: {}, // no saved view: the editor fits the graph to the window
    version: 0.4,
  };
}
