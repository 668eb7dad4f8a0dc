// Text chunks of a PNG file (tEXt and uncompressed iTXt), where SaveImage puts the
// "prompt" and "workflow" JSON.

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

function latin1(bytes) {
  let out = "";
  for (let i = 0; i < bytes.length; i += 8192) out += String.fromCharCode(...bytes.subarray(i, i + 8192));
  return out;
}

/** {keyword: text} of a PNG's text chunks; {} when the bytes are not a PNG. */
export function readPngText(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 8 || SIGNATURE.some((b, i) => bytes[i] !== b)) return {};
  const out = {};
  const utf8 = new TextDecoder("utf-8");
  let pos = 8;
  while (pos + 8 <= bytes.length) {
    const length = view.getUint32(pos);
    const type = latin1(bytes.subarray(pos + 4, pos + 8));
    const start = pos + 8;
    const end = start + length;
    if (end > bytes.length) break;
    const data = bytes.subarray(start, end);
    if (type === "tEXt") {
      const zero = data.indexOf(0);
      if (zero > 0) {
        const key = latin1(data.subarray(0, zero));
        const raw = data.subarray(zero + 1);
        // The standard says Latin-1; some writers put UTF-8 there, which is a superset for ASCII JSON.
        let text;
        try {
          text = new TextDecoder("utf-8", { fatal: true }).decode(raw);
        } catch {
          text = latin1(raw);
        }
        out[key] = text;
      }
    } else if (type === "iTXt") {
      const zero = data.indexOf(0);
      if (zero > 0 && data[zero + 1] === 0) { // compression flag 0: plain text
        const key = latin1(data.subarray(0, zero));
        let p = zero + 3;
        const langEnd = data.indexOf(0, p);
        const transEnd = langEnd < 0 ? -1 : data.indexOf(0, langEnd + 1);
        if (transEnd >= 0) {
          p = transEnd + 1;
          out[key] = utf8.decode(data.subarray(p));
        }
      }
    } else if (type === "IEND") {
      break;
    }
    pos = end + 4; // skip the CRC
  }
  return out;
}
