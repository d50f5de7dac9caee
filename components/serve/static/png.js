// Lossless PNG for id maps, which a canvas cannot carry (16-bit instance ids, exact
// values): decode the server's 8/16-bit greyscale PNGs, encode 8-bit greyscale masks.
// zlib through the browser's CompressionStream / DecompressionStream.
"use strict";

const PNG = (() => {
  const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];
  const CRC_TABLE = new Uint32Array(256).map((_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });

  function crc32(bytes) {
    let c = 0xffffffff;
    for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }

  async function pipe(bytes, stream) {
    const out = new Blob([bytes]).stream().pipeThrough(stream);
    return new Uint8Array(await new Response(out).arrayBuffer());
  }

  function paeth(a, b, c) {
    const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
    return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
  }

  // -> {width, height, data: Uint8Array | Uint16Array} of one grey channel
  async function decode(buffer) {
    const bytes = new Uint8Array(buffer);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (!SIGNATURE.every((v, i) => bytes[i] === v)) throw new Error("not a PNG");
    let pos = 8, width = 0, height = 0, depth = 0, type = 0, interlace = 0;
    const idat = [];
    while (pos < bytes.length) {
      const len = view.getUint32(pos);
      const kind = String.fromCharCode(...bytes.subarray(pos + 4, pos + 8));
      const body = bytes.subarray(pos + 8, pos + 8 + len);
      if (kind === "IHDR") {
        width = view.getUint32(pos + 8);
        height = view.getUint32(pos + 12);
        depth = body[8];
        type = body[9];
        interlace = body[12];
      } else if (kind === "IDAT") idat.push(body);
      else if (kind === "IEND") break;
      pos += 12 + len;
    }
    if (type !== 0 || (depth !== 8 && depth !== 16) || interlace !== 0)
      throw new Error(`PNG colour type ${type} depth ${depth}: expected 8/16-bit grey`);
    const raw = await pipe(new Blob(idat), new DecompressionStream("deflate"));
    const bpp = depth / 8, stride = width * bpp;
    const pixels = new Uint8Array(height * stride);
    for (let y = 0; y < height; y++) {
      const filter = raw[y * (stride + 1)];
      const src = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
      const row = pixels.subarray(y * stride, (y + 1) * stride);
      const up = y > 0 ? pixels.subarray((y - 1) * stride, y * stride) : new Uint8Array(stride);
      for (let x = 0; x < stride; x++) {
        const a = x >= bpp ? row[x - bpp] : 0, b = up[x], c = x >= bpp ? up[x - bpp] : 0;
        const pred = [0, a, b, (a + b) >> 1, paeth(a, b, c)][filter];
        row[x] = (src[x] + pred) & 0xff;
      }
    }
    if (depth === 8) return { width, height, data: pixels };
    const data = new Uint16Array(width * height);
    for (let i = 0; i < data.length; i++) data[i] = (pixels[2 * i] << 8) | pixels[2 * i + 1];
    return { width, height, data };
  }

  function chunk(kind, body) {
    const out = new Uint8Array(12 + body.length);
    const view = new DataView(out.buffer);
    view.setUint32(0, body.length);
    out.set([...kind].map((ch) => ch.charCodeAt(0)), 4);
    out.set(body, 8);
    view.setUint32(8 + body.length, crc32(out.subarray(4, 8 + body.length)));
    return out;
  }

  // 8-bit grey (H*W values) -> PNG Blob
  async function encodeGray8(width, height, data) {
    const raw = new Uint8Array(height * (width + 1));
    for (let y = 0; y < height; y++) raw.set(data.subarray(y * width, (y + 1) * width), y * (width + 1) + 1);
    const ihdr = new Uint8Array(13);
    const view = new DataView(ihdr.buffer);
    view.setUint32(0, width);
    view.setUint32(4, height);
    ihdr.set([8, 0, 0, 0, 0], 8);
    const idat = await pipe(raw, new CompressionStream("deflate"));
    return new Blob(
      [new Uint8Array(SIGNATURE), chunk("IHDR", ihdr), chunk("IDAT", idat), chunk("IEND", new Uint8Array())],
      { type: "image/png" },
    );
  }

  return { decode, encodeGray8 };
})();
