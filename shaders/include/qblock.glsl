// GGUF block formats read in place, for matmul_q.glsl and embed.comp when GQ names one (its lt_dtype_t number,
// fixed by the static assertions in engine/ops/ops_matmul_q.c): the includer declares the buffer wq[] holding the
// file's rows of blocks as they are, bound as 32-bit words (a block may start at any even byte). qb_octet()
// decodes one octet (eight consecutive elements, which always share one scale and offset) into f32 weights.
// The layouts: engine/ops/qblock.h; its CPU reference: engine/ops/qblock.c.
#ifndef LATHE_QBLOCK_GLSL
#define LATHE_QBLOCK_GLSL

// Word i of the blocks: wq[i] unless the includer reads them another way (matmul_q.glsl's texel variant).
#ifndef WQ
#define WQ(i) wq[i]
#endif

#define GQ_Q8_0 6
#define GQ_Q4_0 7
#define GQ_Q4_1 8
#define GQ_Q5_0 9
#define GQ_Q5_1 10
#define GQ_Q2_K 11
#define GQ_Q3_K 12
#define GQ_Q4_K 13
#define GQ_Q5_K 14
#define GQ_Q6_K 15

#if GQ == GQ_Q8_0
#define QB_ELEMS 32u
#define QB_BYTES 34u
#elif GQ == GQ_Q4_0
#define QB_ELEMS 32u
#define QB_BYTES 18u
#elif GQ == GQ_Q4_1
#define QB_ELEMS 32u
#define QB_BYTES 20u
#elif GQ == GQ_Q5_0
#define QB_ELEMS 32u
#define QB_BYTES 22u
#elif GQ == GQ_Q5_1
#define QB_ELEMS 32u
#define QB_BYTES 24u
#elif GQ == GQ_Q2_K
#define QB_ELEMS 256u
#define QB_BYTES 84u
#elif GQ == GQ_Q3_K
#define QB_ELEMS 256u
#define QB_BYTES 110u
#elif GQ == GQ_Q4_K
#define QB_ELEMS 256u
#define QB_BYTES 144u
#elif GQ == GQ_Q5_K
#define QB_ELEMS 256u
#define QB_BYTES 176u
#elif GQ == GQ_Q6_K
#define QB_ELEMS 256u
#define QB_BYTES 210u
#else
#error "GQ names no block format"
#endif

// Byte o of the weight buffer.
uint rd8(uint o) { return (WQ(o >> 2) >> ((o & 3u) << 3)) & 0xffu; }
// The f16 at even byte o, as f32.
float rdh(uint o) { return unpackHalf2x16((WQ(o >> 2) >> ((o & 2u) << 3)) & 0xffffu).x; }
// The four bytes from byte o on (any o; the last of them lies in the data, so the word after an unaligned o does).
uint rd32(uint o) {
  uint s = (o & 3u) << 3, w0 = WQ(o >> 2);
  return s == 0u ? w0 : (w0 >> s) | (WQ((o >> 2) + 1u) << (32u - s));
}
// The four bytes of w as a vec4 of their (unsigned) values after shifting each right by sh and masking with mask.
vec4 bytes4(uint w, uint sh, uint mask) {
  return vec4(float((w >> sh) & mask), float((w >> (8u + sh)) & mask), float((w >> (16u + sh)) & mask),
              float((w >> (24u + sh)) & mask));
}
// Bit b of each of the four bytes of w, as 0 or 1.
vec4 bits4(uint w, uint b) { return bytes4(w, b, 1u); }

// The weights of elements k .. k+8 (k a multiple of 8) of the row whose blocks start at byte row into lo, hi.
void qb_octet(uint row, uint k, out vec4 lo, out vec4 hi) {
  const uint b = row + (k / QB_ELEMS) * QB_BYTES, e = k % QB_ELEMS;
#if GQ == GQ_Q8_0
  const float d = rdh(b);
  const int a0 = int(rd32(b + 2u + e)), a1 = int(rd32(b + 6u + e));
  lo = d * vec4(bitfieldExtract(a0, 0, 8), bitfieldExtract(a0, 8, 8), bitfieldExtract(a0, 16, 8), bitfieldExtract(a0, 24, 8));
  hi = d * vec4(bitfieldExtract(a1, 0, 8), bitfieldExtract(a1, 8, 8), bitfieldExtract(a1, 16, 8), bitfieldExtract(a1, 24, 8));
#elif GQ == GQ_Q4_0 || GQ == GQ_Q4_1 || GQ == GQ_Q5_0 || GQ == GQ_Q5_1
  // The 32-element nibble formats: d (and m for Q4_1 / Q5_1), the fifth bits (Q5_0 / Q5_1), then the nibbles.
  const bool five = GQ == GQ_Q5_0 || GQ == GQ_Q5_1, offset = GQ == GQ_Q4_1 || GQ == GQ_Q5_1;
  const uint at = offset ? 4u : 2u, qs = b + at + (five ? 4u : 0u) + (e & 15u), sh = e >= 16u ? 4u : 0u;
  const float d = rdh(b);
  vec4 q0 = bytes4(rd32(qs), sh, 15u), q1 = bytes4(rd32(qs + 4u), sh, 15u);
  if (five) {
    const uint qh = rd32(b + at) >> e;
    q0 += 16.0 * vec4(float(qh & 1u), float((qh >> 1) & 1u), float((qh >> 2) & 1u), float((qh >> 3) & 1u));
    q1 += 16.0 * vec4(float((qh >> 4) & 1u), float((qh >> 5) & 1u), float((qh >> 6) & 1u), float((qh >> 7) & 1u));
  }
  if (offset) { // w = d q + m
    const float m = rdh(b + 2u);
    lo = q0 * d + m;
    hi = q1 * d + m;
  } else { // w = d (q - 8), or d (q - 16) with the fifth bit
    const float zero = five ? 16.0 : 8.0;
    lo = (q0 - zero) * d;
    hi = (q1 - zero) * d;
  }
#elif GQ == GQ_Q2_K
  const uint h = e >> 7, j = (e & 127u) >> 5, l = e & 31u, sc = rd8(b + 8u * h + 2u * j + (l >> 4));
  const float dl = rdh(b + 80u) * float(sc & 15u), ml = rdh(b + 82u) * float(sc >> 4);
  const uint qs = b + 16u + 32u * h + l;
  lo = dl * bytes4(rd32(qs), 2u * j, 3u) - ml;
  hi = dl * bytes4(rd32(qs + 4u), 2u * j, 3u) - ml;
#elif GQ == GQ_Q3_K
  const uint h = e >> 7, j = (e & 127u) >> 5, l = e & 31u, s = 8u * h + 2u * j + (l >> 4);
  const uint sl = s < 8u ? rd8(b + 96u + s) & 15u : rd8(b + 88u + s) >> 4;
  const uint sh = (rd8(b + 104u + (s & 3u)) >> (2u * (s >> 2))) & 3u;
  const float dl = rdh(b + 108u) * float(int(sl | (sh << 4)) - 32);
  const uint qs = b + 32u + 32u * h + l, hb = 4u * h + j;
  lo = dl * (bytes4(rd32(qs), 2u * j, 3u) - 4.0 + 4.0 * bits4(rd32(b + l), hb));
  hi = dl * (bytes4(rd32(qs + 4u), 2u * j, 3u) - 4.0 + 4.0 * bits4(rd32(b + l + 4u), hb));
#elif GQ == GQ_Q4_K || GQ == GQ_Q5_K
  const uint c = e >> 6, w = e & 63u, sub = 2u * c + (w >> 5), l = w & 31u;
  uint sc, mn;
  if (sub < 4u) {
    sc = rd8(b + 4u + sub) & 63u;
    mn = rd8(b + 8u + sub) & 63u;
  } else {
    sc = (rd8(b + 8u + sub) & 15u) | ((rd8(b + sub) >> 6) << 4);
    mn = (rd8(b + 8u + sub) >> 4) | ((rd8(b + 4u + sub) >> 6) << 4);
  }
  const float d1 = rdh(b) * float(sc), m1 = rdh(b + 2u) * float(mn);
  const uint qs = b + (GQ == GQ_Q4_K ? 16u : 48u) + 32u * c + l, sh = w >= 32u ? 4u : 0u;
  vec4 q0 = bytes4(rd32(qs), sh, 15u), q1 = bytes4(rd32(qs + 4u), sh, 15u);
#if GQ == GQ_Q5_K
  q0 += 16.0 * bits4(rd32(b + 16u + l), sub);
  q1 += 16.0 * bits4(rd32(b + 20u + l), sub);
#endif
  lo = d1 * q0 - m1;
  hi = d1 * q1 - m1;
#elif GQ == GQ_Q6_K
  const uint h = e >> 7, w = e & 127u, qd = w >> 5, l = w & 31u;
  const uint ql = b + 64u * h + l + 32u * (qd & 1u), qh = b + 128u + 32u * h + l, sh = qd >= 2u ? 4u : 0u;
  const float ds = rdh(b + 208u) * float(bitfieldExtract(int(rd8(b + 192u + 8u * h + (l >> 4) + 2u * qd)), 0, 8));
  lo = ds * (bytes4(rd32(ql), sh, 15u) + 16.0 * bytes4(rd32(qh), 2u * qd, 3u) - 32.0);
  hi = ds * (bytes4(rd32(ql + 4u), sh, 15u) + 16.0 * bytes4(rd32(qh + 4u), 2u * qd, 3u) - 32.0);
#endif
}

#endif
