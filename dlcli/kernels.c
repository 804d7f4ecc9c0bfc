/* dlcli's CPU kernels for training (see dlcli/native.py, which compiles, loads, checks and
 * calls them): a 2x2 max-pooling, and a small convolution fused with its ReLU and that pooling.
 * Must not be built with -ffast-math: the NaN tests (v != v) and the signed zeros are the point.
 *
 * 1. dlcli_maxpool2x2_{forward,backward}_{f32,bf16}
 *
 * Tensors are float32 or bfloat16 in NHWC memory (torch's channels_last), with C a multiple
 * of 8. bfloat16 values are widened to float32 exactly (a 16-bit shift) and every result
 * is one of the inputs, a zero or a gradient passed through, so narrowing them back is
 * exact too: the same choices and values as in float32, as torch computes them.
 * Windows are 2x2 with stride 2, no padding; an odd last row or column is left out, as
 * torch's floor mode leaves it out.
 *
 * forward:  out = the window's maximum (ReLU'd when relu != 0), and code = which of its four
 *           pixels won (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right), one byte.
 *           The same choice as torch's max_pool2d: pixels in that order, a later one wins if
 *           it is greater or NaN (ties go to the first, NaN to the last NaN). ReLU as torch's:
 *           negative values become 0, NaN and -0.0 stay.
 * backward: the input's gradient, written once (no zero fill, then a scatter): the output
 *           gradient at the winning pixel and 0 elsewhere; with relu, 0 where the output is
 *           <= 0 (torch's threshold_backward). The winner gets 0.0f + g: what torch's
 *           accumulation into a zeroed gradient gives (-0.0 becomes +0.0).
 * planar:   the pooled map (and so its gradient) in NCHW memory instead, for a flatten after
 *           the pooling, which then copies nothing: its (C, H, W) order is that memory.
 *
 * 2. dlcli_convpool_{forward,backward}
 *
 * A convolution with few input channels (a network's first layer: 1 for grey images, 3 for
 * colour), stride 1, zero padding, followed by its bias, optionally a ReLU, and 2x2 max-pooling
 * as above, on float32 NHWC maps. Its full-size output is never written: each pooled pixel's
 * four convolution outputs are computed in registers, pooled, and only the pooled map and the
 * winner codes are stored. The input needs no gradient (it is the data), so the backward only
 * computes the weight and bias gradients, and only at the winning pixels: the others get no
 * gradient through a max-pooling, a quarter of the work of a full weight gradient.
 *
 * forward:  conv = bias + sum over the kernel of weight * input (zero outside the image), then
 *           pooled and coded as dlcli_maxpool2x2_forward. The sums run in float32 in kernel
 *           order: the same value as torch's convolution to the last bit or two of rounding.
 * backward: dweight and dbias, summed per image and then over images in order, so the result
 *           does not depend on the number of threads (the same bits for a run and its resume).
 * half:     bf16 autocast's version: the caller rounds the input, weights and bias to bfloat16
 *           values, the sums still run in float32, and each convolution output is rounded to
 *           bfloat16 before the pooling (as torch's bf16 convolution rounds its output); the
 *           pooled map and its gradient are bfloat16, the weight and bias gradients float32.
 *
 * Eight or sixteen channels at a time in GCC/Clang vector types: the compiler emits AVX,
 * AVX-512 or NEON for them (-march=native), with no intrinsics to port. Rows (pooling) or
 * images (the convolution) are shared out over OpenMP threads where it is compiled with
 * -fopenmp.
 */
#include <stdint.h>
#include <string.h>

typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));
typedef uint16_t bf16;

static inline f8 load_f32(const float *p) {
  f8 v;
  memcpy(&v, p, sizeof v);
  return v;
}

static inline void store_f32(float *p, f8 v) { memcpy(p, &v, sizeof v); }

static inline f8 load_bf16(const bf16 *p) {
  i8 bits;
  for (int t = 0; t < 8; t++) bits[t] = (int32_t)((uint32_t)p[t] << 16);
  return (f8)bits;
}

static inline void store_bf16(bf16 *p, f8 v) {
  const i8 bits = (i8)v;
  for (int t = 0; t < 8; t++) p[t] = (bf16)((uint32_t)bits[t] >> 16);
}

typedef uint8_t u8x8 __attribute__((vector_size(8)));

/* The winner codes (0-3), one byte a lane. */
static inline void store_codes(uint8_t *p, i8 won) {
  const u8x8 bytes = __builtin_convertvector(won, u8x8);
  memcpy(p, &bytes, sizeof bytes);
}

static inline i8 load_codes(const uint8_t *p) {
  u8x8 bytes;
  memcpy(&bytes, p, sizeof bytes);
  return __builtin_convertvector(bytes, i8);
}

/* mask ? a : b, lane by lane (mask lanes are all ones or all zeros). */
static inline f8 blend(i8 mask, f8 a, f8 b) { return (f8)(((i8)a & mask) | ((i8)b & ~mask)); }

int dlcli_kernels_version(void) { return 7; }

#define DLCLI_MAXPOOL(SUFFIX, T, LOAD, STORE)                                                   \
  void dlcli_maxpool2x2_forward_##SUFFIX(const T *x, T *out, uint8_t *code, int64_t n,         \
                                         int64_t h, int64_t w, int64_t c, int relu,             \
                                         int planar) {                                          \
    const int64_t oh = h / 2, ow = w / 2;                                                       \
    _Pragma("omp parallel for schedule(static)")                                                \
    for (int64_t row = 0; row < n * oh; row++) {                                                \
      const int64_t b = row / oh, i = row % oh;                                                 \
      const T *top = x + ((b * h + 2 * i) * w) * c, *bottom = top + w * c;                      \
      T *o = out + row * ow * c;                                                                \
      uint8_t *k = code + row * ow * c;                                                         \
      for (int64_t j = 0; j < ow; j++) {                                                        \
        for (int64_t ch = 0; ch < c; ch += 8) {                                                 \
          const int64_t at = 2 * j * c + ch, e = j * c + ch;                                   \
          f8 best = LOAD(top + at), v;                                                          \
          i8 won = {0}, later;                                                                  \
          v = LOAD(top + at + c);                                                               \
          later = (v > best) | (v != v);                                                        \
          best = blend(later, v, best);                                                         \
          won = (won & ~later) | (later & 1);                                                   \
          v = LOAD(bottom + at);                                                                \
          later = (v > best) | (v != v);                                                        \
          best = blend(later, v, best);                                                         \
          won = (won & ~later) | (later & 2);                                                   \
          v = LOAD(bottom + at + c);                                                            \
          later = (v > best) | (v != v);                                                        \
          best = blend(later, v, best);                                                         \
          won = (won & ~later) | (later & 3);                                                   \
          if (relu) best = (f8)((i8)best & ~(best < 0.0f));                                     \
          if (planar) { /* NCHW: each channel's map apart */                                   \
            T lanes[8], *p = out + ((b * c + ch) * oh + i) * ow + j;                            \
            STORE(lanes, best);                                                                 \
            for (int t = 0; t < 8; t++) p[t * oh * ow] = lanes[t];                              \
          } else {                                                                              \
            STORE(o + e, best);                                                                 \
          }                                                                                     \
          store_codes(k + e, won);                                                              \
        }                                                                                       \
      }                                                                                         \
    }                                                                                           \
  }                                                                                             \
                                                                                                \
  void dlcli_maxpool2x2_backward_##SUFFIX(const T *grad, const uint8_t *code, const T *out,    \
                                          T *grad_in, int64_t n, int64_t h, int64_t w,          \
                                          int64_t c, int relu, int planar) {                    \
    const int64_t oh = h / 2, ow = w / 2;                                                       \
    const f8 zero = {0};                                                                        \
    _Pragma("omp parallel for schedule(static)")                                                \
    for (int64_t row = 0; row < n * oh; row++) {                                                \
      const int64_t b = row / oh, i = row % oh;                                                 \
      T *top = grad_in + ((b * h + 2 * i) * w) * c, *bottom = top + w * c;                      \
      const T *g = grad + row * ow * c, *o = out + row * ow * c;                                \
      const uint8_t *k = code + row * ow * c;                                                   \
      for (int64_t j = 0; j < ow; j++) {                                                        \
        for (int64_t ch = 0; ch < c; ch += 8) {                                                 \
          const int64_t at = 2 * j * c + ch, e = j * c + ch;                                    \
          f8 v, kept;                                                                           \
          if (planar) { /* NCHW grad and out: each channel's map apart */                      \
            const int64_t at0 = ((b * c + ch) * oh + i) * ow + j;                               \
            T lanes[8];                                                                         \
            for (int t = 0; t < 8; t++) lanes[t] = grad[at0 + t * oh * ow];                     \
            v = LOAD(lanes);                                                                    \
            for (int t = 0; t < 8; t++) lanes[t] = out[at0 + t * oh * ow];                      \
            kept = LOAD(lanes);                                                                 \
          } else {                                                                              \
            v = LOAD(g + e);                                                                    \
            kept = LOAD(o + e);                                                                 \
          }                                                                                     \
          if (relu) v = (f8)((i8)v & ~(kept <= 0.0f));                                          \
          v = zero + v;                                                                         \
          const i8 won = load_codes(k + e);                                                     \
          STORE(top + at, (f8)((i8)v & (won == 0)));                                            \
          STORE(top + at + c, (f8)((i8)v & (won == 1)));                                        \
          STORE(bottom + at, (f8)((i8)v & (won == 2)));                                         \
          STORE(bottom + at + c, (f8)((i8)v & (won == 3)));                                     \
        }                                                                                       \
      }                                                                                         \
      if (w % 2) { /* the column no window covers */                                            \
        memset(top + (w - 1) * c, 0, (size_t)c * sizeof(T));                                    \
        memset(bottom + (w - 1) * c, 0, (size_t)c * sizeof(T));                                 \
      }                                                                                         \
    }                                                                                           \
    if (h % 2) { /* the row no window covers */                                                 \
      for (int64_t b = 0; b < n; b++)                                                           \
        memset(grad_in + ((b * h + h - 1) * w) * c, 0, (size_t)(w * c) * sizeof(T));            \
    }                                                                                           \
  }

DLCLI_MAXPOOL(f32, float, load_f32, store_f32)
DLCLI_MAXPOOL(bf16, bf16, load_bf16, store_bf16)

/* --- 2. a small convolution fused with its bias, ReLU and 2x2 max-pooling --------------- */

typedef float f16 __attribute__((vector_size(64))); /* sixteen float32 lanes */
typedef int32_t i16 __attribute__((vector_size(64)));
typedef uint8_t u8x16 __attribute__((vector_size(16)));
typedef uint32_t w8 __attribute__((vector_size(32))); /* lanes as bits, for bfloat16 */
typedef uint32_t w16 __attribute__((vector_size(64)));
typedef uint16_t h8 __attribute__((vector_size(16))); /* bfloat16 lanes */
typedef uint16_t h16 __attribute__((vector_size(32)));

#define LOADV(T, p) ({ T v_; memcpy(&v_, (p), sizeof v_); v_; })
#define STOREV(p, v) do { __typeof__(v) v_ = (v); memcpy((p), &v_, sizeof v_); } while (0)
#define BLENDV(IT, mask, a, b) ((__typeof__(a))(((IT)(a) & (mask)) | ((IT)(b) & ~(mask))))
/* v rounded to bfloat16 (to nearest, ties to even, as torch rounds), still as float32 lanes;
 * a NaN stays a (quiet) NaN. */
#define ROUND_BF16(VT, IT, WT, v)                                                              \
  ({                                                                                           \
    const WT b_ = (WT)(v);                                                                     \
    const WT r_ = (b_ + 0x7fffu + ((b_ >> 16) & 1u)) & 0xffff0000u;                            \
    const WT q_ = (b_ | 0x00400000u) & 0xffff0000u;                                            \
    (VT)BLENDV(IT, (v) != (v), q_, r_);                                                        \
  })
#define LOAD_BF16(VT, WT, HT, p) ((VT)(__builtin_convertvector(LOADV(HT, p), WT) << 16))
#define MAX_SPAN 64 /* kernel width x input channels (native.py checks it before calling) */

/* One image zero-padded into p: rows x cols x ci, the input window of the pooled outputs (the
 * image shifted by top/left; rows and columns past it are zeros, or are left out). */
static void pad_image(const float *x, float *p, int64_t h, int64_t w, int64_t ci, int64_t rows,
                      int64_t cols, int64_t top, int64_t left) {
  memset(p, 0, (size_t)(rows * cols * ci) * sizeof(float));
  const int64_t width = w < cols - left ? w : cols - left;
  for (int64_t r = 0; r < h && r + top < rows; r++)
    memcpy(p + ((r + top) * cols + left) * ci, x + r * w * ci, (size_t)(width * ci) * sizeof(float));
}

/* The per-image bodies, for L = 8 or 16 channels at a time. kh, kw and ci are constants where
 * the callers below specialise them (3x3 and 5x5 on grey images, 3x3 on colour, with filters a
 * multiple of 16): the compiler then unrolls the kernel loops and keeps the sums in registers.
 * Other shapes, and filters a multiple of 8 only, take the general loops: each specialisation
 * adds compile time (this part: ~1.0 s with these, 1.6 s with the 8-wide ones too; the whole
 * file ~1.5 s). */
#define DLCLI_CONVPOOL_IMAGE(L, VT, IT, UT, WT, HT)                                            \
  static inline __attribute__((always_inline)) void convpool_forward_image_##L(              \
      const float *p, const float *wt, const float *bias, void *out, uint8_t *code,            \
      int64_t f, const int64_t kh, const int64_t kw, const int64_t ci, int64_t oh,             \
      int64_t ow, int64_t cols, int relu, int half) {                                          \
    const int64_t span = kw * ci;                                                               \
    for (int64_t i = 0; i < oh; i++) {                                                          \
      for (int64_t j = 0; j < ow; j++) {                                                        \
        const float *top = p + (2 * i * cols + 2 * j) * ci, *bottom = top + cols * ci;          \
        const int64_t e = (i * ow + j) * f;                                                     \
        for (int64_t g = 0; g < f; g += L) {                                                    \
          VT a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}; /* the window's four outputs */           \
          for (int64_t r = 0; r < kh; r++) {                                                    \
            const float *t = top + r * cols * ci, *b = bottom + r * cols * ci;                  \
            for (int64_t s = 0; s < span; s++) {                                                \
              const VT weight = LOADV(VT, wt + (r * span + s) * f + g);                         \
              a0 += weight * t[s];                                                              \
              a1 += weight * t[s + ci];                                                         \
              a2 += weight * b[s];                                                              \
              a3 += weight * b[s + ci];                                                         \
            }                                                                                   \
          }                                                                                     \
          if (bias) {                                                                           \
            const VT bv = LOADV(VT, bias + g);                                                  \
            a0 += bv, a1 += bv, a2 += bv, a3 += bv;                                             \
          }                                                                                     \
          if (half) { /* bf16 maps: each output rounded, as autocast's convolution rounds */    \
            a0 = ROUND_BF16(VT, IT, WT, a0), a1 = ROUND_BF16(VT, IT, WT, a1);                   \
            a2 = ROUND_BF16(VT, IT, WT, a2), a3 = ROUND_BF16(VT, IT, WT, a3);                   \
          }                                                                                     \
          VT best = a0;                                                                         \
          IT won = {0}, later;                                                                  \
          later = (a1 > best) | (a1 != a1);                                                     \
          best = BLENDV(IT, later, a1, best);                                                   \
          won = (won & ~later) | (later & 1);                                                   \
          later = (a2 > best) | (a2 != a2);                                                     \
          best = BLENDV(IT, later, a2, best);                                                   \
          won = (won & ~later) | (later & 2);                                                   \
          later = (a3 > best) | (a3 != a3);                                                     \
          best = BLENDV(IT, later, a3, best);                                                   \
          won = (won & ~later) | (later & 3);                                                   \
          if (relu) best = (VT)((IT)best & ~(best < 0.0f));                                     \
          if (half)                                                                             \
            STOREV((bf16 *)out + e + g, __builtin_convertvector((WT)best >> 16, HT));           \
          else                                                                                  \
            STOREV((float *)out + e + g, best);                                                 \
          STOREV(code + e + g, __builtin_convertvector(won, UT));                               \
        }                                                                                       \
      }                                                                                         \
    }                                                                                           \
  }                                                                                             \
                                                                                                \
  /* sums: kh x kw x ci x f weight gradient sums, then f bias ones, for this image */          \
  static inline __attribute__((always_inline)) void convpool_backward_image_##L(             \
      const float *p, const void *grad, const void *out, const uint8_t *code, float *sums,     \
      int64_t f, const int64_t kh, const int64_t kw, const int64_t ci, int64_t oh,             \
      int64_t ow, int64_t cols, int relu, int half) {                                          \
    const int64_t span = kw * ci, block = span >= 12 ? 1 : 12 / span; /* rows per pass */     \
    for (int64_t g = 0; g < f; g += L) {                                                        \
      VT bias = {0};                                                                            \
      for (int64_t r0 = 0; r0 < kh; r0 += block) {                                              \
        const int64_t rows = kh - r0 < block ? kh - r0 : block;                                 \
        VT acc[MAX_SPAN > 12 ? MAX_SPAN : 12];                                                  \
        for (int64_t t = 0; t < rows * span; t++) acc[t] = (VT){0};                             \
        for (int64_t i = 0; i < oh; i++) {                                                      \
          for (int64_t j = 0; j < ow; j++) {                                                    \
            const int64_t e = (i * ow + j) * f + g;                                             \
            VT gv = half ? LOAD_BF16(VT, WT, HT, (const bf16 *)grad + e)                        \
                         : LOADV(VT, (const float *)grad + e);                                  \
            if (relu) {                                                                         \
              const VT o = half ? LOAD_BF16(VT, WT, HT, (const bf16 *)out + e)                  \
                                : LOADV(VT, (const float *)out + e);                            \
              gv = (VT)((IT)gv & ~(o <= 0.0f));                                                 \
            }                                                                                   \
            const IT won = __builtin_convertvector(LOADV(UT, code + e), IT);                    \
            const IT m1 = won == 1, m2 = won == 2, m3 = won == 3;                               \
            if (r0 == 0) bias += gv;                                                            \
            for (int64_t r = 0; r < rows; r++) {                                                \
              const float *t = p + ((2 * i + r0 + r) * cols + 2 * j) * ci, *b = t + cols * ci;  \
              for (int64_t s = 0; s < span; s++) { /* the input under the winner */            \
                VT v = BLENDV(IT, m1, (VT){0} + t[s + ci], (VT){0} + t[s]);                     \
                v = BLENDV(IT, m2, (VT){0} + b[s], v);                                          \
                v = BLENDV(IT, m3, (VT){0} + b[s + ci], v);                                     \
                acc[r * span + s] += gv * v;                                                    \
              }                                                                                 \
            }                                                                                   \
          }                                                                                     \
        }                                                                                       \
        for (int64_t t = 0; t < rows * span; t++) STOREV(sums + (r0 * span + t) * f + g, acc[t]); \
      }                                                                                         \
      STOREV(sums + kh * span * f + g, bias);                                                   \
    }                                                                                           \
  }

DLCLI_CONVPOOL_IMAGE(8, f8, i8, u8x8, w8, h8)
DLCLI_CONVPOOL_IMAGE(16, f16, i16, u8x16, w16, h16)

/* sums[0:size] = the sum of the n rows sums[b * size : (b + 1) * size], added in row order
 * (0.0f + row 0 + row 1 ...) for every element: the same bits on any number of threads. Each
 * thread takes a run of columns and reads the rows in order, a cache line at a time. */
static void sum_images(float *sums, int64_t n, int64_t size) {
  const int64_t chunk = 256;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < size; c += chunk) {
    const int64_t m = size - c < chunk ? size - c : chunk;
    float total[256] = {0};
    for (int64_t b = 0; b < n; b++)
      for (int64_t t = 0; t < m; t++) total[t] += sums[b * size + c + t];
    memcpy(sums + c, total, (size_t)m * sizeof(float));
  }
}

/* Calls CALL(kh, kw, ci) with constants for the common shapes, else with the variables. */
#define DLCLI_SPECIALISED(CALL)                                                                 \
  if (kh == 3 && kw == 3 && ci == 1) CALL(3, 3, 1)                                             \
  else if (kh == 5 && kw == 5 && ci == 1) CALL(5, 5, 1)                                        \
  else if (kh == 3 && kw == 3 && ci == 3) CALL(3, 3, 3)                                        \
  else CALL(kh, kw, ci)

/* x: n x h x w x ci; padded: n x (2 oh + kh - 1) x (2 ow + kw - 1) x ci, written here (the
 * images zero-padded, for the backward); wt: kh x kw x ci x f; bias: f or NULL; out, code:
 * n x oh x ow x f, the pooled map of the convolution of x shifted down by top and right by
 * left (its padding). half: out is bfloat16, each convolution output rounded to it before the
 * pooling (x, wt and bias hold bfloat16 values already: bf16 autocast's convolution). */
void dlcli_convpool_forward(const float *x, float *padded, const float *wt, const float *bias,
                            void *out, uint8_t *code, int64_t n, int64_t h, int64_t w,
                            int64_t ci, int64_t f, int64_t kh, int64_t kw, int64_t top,
                            int64_t left, int64_t oh, int64_t ow, int relu, int half) {
  const int64_t rows = 2 * oh + kh - 1, cols = 2 * ow + kw - 1;
  const size_t size = half ? sizeof(bf16) : sizeof(float);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n; b++) {
    float *p = padded + b * rows * cols * ci;
    pad_image(x + b * h * w * ci, p, h, w, ci, rows, cols, top, left);
    void *o = (char *)out + (size_t)(b * oh * ow * f) * size;
    uint8_t *k = code + b * oh * ow * f;
#define DLCLI_FORWARD(KH, KW, CI)                                                              \
      convpool_forward_image_16(p, wt, bias, o, k, f, KH, KW, CI, oh, ow, cols, relu, half);
    if (f % 16)
      convpool_forward_image_8(p, wt, bias, o, k, f, kh, kw, ci, oh, ow, cols, relu, half);
    else
      DLCLI_SPECIALISED(DLCLI_FORWARD)
  }
}

/* padded, grad (of out), out, code, half: as the forward's (grad is bfloat16 with out);
 * sums: n x (kh kw ci f + f) scratch; dw: f x kh x kw x ci (torch's channels_last weight);
 * db: f. The gradients are float32 sums whatever half says. */
void dlcli_convpool_backward(const float *padded, const void *grad, const void *out,
                             const uint8_t *code, float *sums, float *dw, float *db, int64_t n,
                             int64_t ci, int64_t f, int64_t kh, int64_t kw, int64_t oh,
                             int64_t ow, int relu, int half) {
  const int64_t rows = 2 * oh + kh - 1, cols = 2 * ow + kw - 1, kk = kh * kw * ci;
  const int64_t size = kk * f + f;
  const size_t bytes = half ? sizeof(bf16) : sizeof(float);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n; b++) {
    const float *p = padded + b * rows * cols * ci;
    const size_t at = (size_t)(b * oh * ow * f);
    const void *g = (const char *)grad + at * bytes, *o = (const char *)out + at * bytes;
    float *s = sums + b * size;
#define DLCLI_BACKWARD(KH, KW, CI)                                                              \
      convpool_backward_image_16(p, g, o, code + at, s, f, KH, KW, CI, oh, ow, cols, relu, half);
    if (f % 16)
      convpool_backward_image_8(p, g, o, code + at, s, f, kh, kw, ci, oh, ow, cols, relu, half);
    else
      DLCLI_SPECIALISED(DLCLI_BACKWARD)
  }
  /* over the images in order: the same sums whatever the number of threads */
  sum_images(sums, n, size);
  for (int64_t t = 0; t < size; t++) {
    if (t < kk * f)
      dw[(t % f) * kk + t / f] = sums[t];
    else
      db[t - kk * f] = sums[t];
  }
}

/* --- 3. the backward of a later convolution fused with its pooling, with the input's gradient --
 *
 * A convolution deeper in the network (its input a feature map with a multiple of 8 channels,
 * which needs a gradient) runs the same forward as above. Its backward exploits the pooling:
 * only each window's winning output has a gradient, so only its kernel window contributes to
 * the weight, bias and input gradients, a quarter of the work of a full convolution backward;
 * with the ReLU, outputs <= 0 have none either (skipped, like the pooling's losers: where an
 * input is infinite or NaN, torch's 0 * x would make a NaN that this leaves out).
 * Vectorised over input channels (16 at a time, or 8), one image per thread:
 *   dw[f][r][q][c] += g * x[y + r][x + q][c] and dx[y + r][x + q][c] += g * w[f][r][q][c]
 * for each pooled output (its winner at y, x) and filter f, in a fixed order; the input's
 * gradient is accumulated in a padded scratch image, then its interior copied out. The weight
 * and bias sums are per image, then added over images in order, as in part 2.
 *
 * padded, code: as dlcli_convpool_backward's; grad and out: float32 (a bf16 step widens them
 * first, exactly); wf: f x kh x kw x ci, the weights (torch's channels_last memory; bf16
 * values in a bf16 step); sums: n x (f kh kw ci + f) scratch; scratch: n x rows x cols x ci;
 * offsets, grads: n x f x oh x ow scratch (each filter's winners);
 * dw: f x kh x kw x ci; db: f; dx: n x h x w x ci, float32, or NULL for no input gradient.
 */
/* One image's gradients; L channels at a time (VT), kh, kw and ci constants where the caller
 * specialises them, so that the compiler keeps acc and taps in registers. First each filter's
 * list of winners with a gradient (offset of its input window, gradient), then per filter:
 * the weight and bias sums over the list, and the input gradient added along it. */
#define DLCLI_CONVPOOL_INPUT_IMAGE(L, VT)                                                      \
  static inline __attribute__((always_inline)) void convpool_input_image_##L(                \
      const float *p, const float *gf, const float *of, const uint8_t *code, const float *wf, \
      float *s, float *d, int32_t *offsets, float *grads, int64_t f, const int64_t kh,        \
      const int64_t kw, const int64_t ci, int64_t oh, int64_t ow, int64_t cols, int relu) {   \
    const int64_t kk = kh * kw * ci, span = kw * ci, pixels = oh * ow, stride = cols * ci;     \
    int64_t count[f];                                                                          \
    for (int64_t fi = 0; fi < f; fi++) count[fi] = 0;                                          \
    for (int64_t i = 0; i < oh; i++) {                                                         \
      for (int64_t j = 0; j < ow; j++) {                                                       \
        const int64_t e = (i * ow + j) * f;                                                    \
        for (int64_t fi = 0; fi < f; fi++) { /* kept unless the ReLU stops it: no branch */    \
          const int64_t k = code[e + fi], at = fi * pixels + count[fi];                        \
          offsets[at] = (int32_t)(((2 * i + (k >> 1)) * cols + 2 * j + (k & 1)) * ci);         \
          grads[at] = gf[e + fi];                                                              \
          count[fi] += !(relu && of[e + fi] <= 0.0f);                                          \
        }                                                                                      \
      }                                                                                        \
    }                                                                                          \
    for (int64_t fi = 0; fi < f; fi++) {                                                       \
      const int32_t *at = offsets + fi * pixels;                                               \
      const float *g = grads + fi * pixels;                                                    \
      const int64_t m = count[fi];                                                             \
      const int held = kk / L <= 32;                                                           \
      VT acc[kk / L <= 32 ? kk / L : 1];                                                       \
      float *sw = s + fi * kk;                                                                 \
      if (held)                                                                                \
        for (int64_t t = 0; t < kk / L; t++) acc[t] = (VT){0};                                 \
      else                                                                                     \
        memset(sw, 0, (size_t)kk * sizeof(float));                                             \
      float bias = 0.0f;                                                                       \
      for (int64_t e = 0; e < m; e++) {                                                        \
        const float gv = g[e], *x = p + at[e];                                                 \
        bias += gv;                                                                            \
        for (int64_t r = 0; r < kh; r++)                                                       \
          for (int64_t t = 0; t < span; t += L) {                                              \
            const VT v = gv * LOADV(VT, x + r * stride + t);                                   \
            if (held)                                                                          \
              acc[(r * span + t) / L] += v;                                                    \
            else                                                                               \
              STOREV(sw + r * span + t, LOADV(VT, sw + r * span + t) + v);                     \
          }                                                                                    \
      }                                                                                        \
      if (held)                                                                                \
        for (int64_t t = 0; t < kk / L; t++) STOREV(sw + t * L, acc[t]);                       \
      s[kk * f + fi] = bias;                                                                   \
      if (!d) continue;                                                                        \
      const float *wt = wf + fi * kk; /* the input's gradient, along the same list */          \
      VT taps[kk / L <= 32 ? kk / L : 1];                                                      \
      if (held)                                                                                \
        for (int64_t t = 0; t < kk / L; t++) taps[t] = LOADV(VT, wt + t * L);                  \
      for (int64_t e = 0; e < m; e++) {                                                        \
        const float gv = g[e];                                                                 \
        float *y = d + at[e];                                                                  \
        for (int64_t r = 0; r < kh; r++)                                                       \
          for (int64_t t = 0; t < span; t += L) {                                              \
            const VT w_ = held ? taps[(r * span + t) / L] : LOADV(VT, wt + r * span + t);      \
            STOREV(y + r * stride + t, LOADV(VT, y + r * stride + t) + gv * w_);               \
          }                                                                                    \
      }                                                                                        \
    }                                                                                          \
  }

DLCLI_CONVPOOL_INPUT_IMAGE(8, f8)
DLCLI_CONVPOOL_INPUT_IMAGE(16, f16)

/* The input's gradient of a 3x3 convolution on 16 channels (the reference CNN's second
 * layer), pooled pixel by pooled pixel: its four windows cover a 4x4 patch, held in sixteen
 * registers while each filter adds its kernel at its winner's corner (the filters grouped by
 * winner, so that each group's corner is a constant), then added to the image once: a
 * sixteenth of the stores of adding each filter's kernel into memory. */
static void input_grad_3x3x16(const float *gf, const float *of, const uint8_t *code,
                              const float *wf, float *d, int64_t f, int64_t oh, int64_t ow,
                              int64_t cols, int relu) {
  const int64_t stride = cols * 16;
  int32_t by[4][f];
  for (int64_t i = 0; i < oh; i++) {
    for (int64_t j = 0; j < ow; j++) {
      const int64_t e = (i * ow + j) * f;
      int64_t count[4] = {0, 0, 0, 0};
      for (int64_t fi = 0; fi < f; fi++) { /* kept unless the ReLU stops it: no branch */
        const int k = code[e + fi];
        by[k][count[k]] = (int32_t)fi;
        count[k] += !(relu && of[e + fi] <= 0.0f);
      }
      f16 patch[16];
      for (int t = 0; t < 16; t++) patch[t] = (f16){0};
#define DLCLI_CORNER(K, DY, DX)                                                                 \
      for (int64_t t = 0; t < count[K]; t++) {                                                  \
        const int64_t fi = by[K][t];                                                            \
        const float gv = gf[e + fi], *w = wf + fi * 144;                                        \
        for (int r = 0; r < 3; r++)                                                             \
          for (int q = 0; q < 3; q++)                                                           \
            patch[(DY + r) * 4 + DX + q] += gv * LOADV(f16, w + (r * 3 + q) * 16);              \
      }
      DLCLI_CORNER(0, 0, 0)
      DLCLI_CORNER(1, 0, 1)
      DLCLI_CORNER(2, 1, 0)
      DLCLI_CORNER(3, 1, 1)
#undef DLCLI_CORNER
      float *to = d + (2 * i * cols + 2 * j) * 16;
      for (int r = 0; r < 4; r++)
        for (int q = 0; q < 4; q++)
          STOREV(to + r * stride + q * 16, LOADV(f16, to + r * stride + q * 16) + patch[r * 4 + q]);
    }
  }
}

void dlcli_convpool_backward_input(const float *padded, const float *grad, const float *out,
                                   const uint8_t *code, const float *wf, float *sums,
                                   float *scratch, int32_t *offsets, float *grads, float *dw,
                                   float *db, float *dx, int64_t n,
                                   int64_t h, int64_t w, int64_t ci, int64_t f, int64_t kh,
                                   int64_t kw, int64_t top, int64_t left, int64_t oh, int64_t ow,
                                   int relu) {
  const int64_t rows = 2 * oh + kh - 1, cols = 2 * ow + kw - 1, kk = kh * kw * ci;
  const int64_t size = kk * f + f, image = rows * cols * ci, maps = oh * ow * f;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n; b++) {
    const float *p = padded + b * image;
    float *d = dx ? scratch + b * image : NULL, *s = sums + b * size;
    if (d) memset(d, 0, (size_t)image * sizeof(float));
    const float *gf = grad + b * maps, *of = out + b * maps;
    int32_t *at = offsets + b * maps;
    float *g = grads + b * maps;
#define DLCLI_INPUT(KH, KW, CI)                                                                 \
      convpool_input_image_16(p, gf, of, code + b * maps, wf, s, d, at, g, f, KH, KW, CI, oh,  \
                              ow, cols, relu);
    if (ci % 16)
      convpool_input_image_8(p, gf, of, code + b * maps, wf, s, d, at, g, f, kh, kw, ci, oh, ow,
                             cols, relu);
    else if (kh == 3 && kw == 3 && ci == 16) {
      float *input = d;
      d = NULL; /* the weight and bias gradients there; the input's here: */
      DLCLI_INPUT(3, 3, 16)
      d = input;
      if (d) input_grad_3x3x16(gf, of, code + b * maps, wf, d, f, oh, ow, cols, relu);
    }
    else if (kh == 5 && kw == 5 && ci == 16)
      DLCLI_INPUT(5, 5, 16)
    else
      DLCLI_INPUT(kh, kw, ci)
    float *out_image = d ? dx + b * h * w * ci : NULL;
    for (int64_t y = 0; d && y < h; y++) {
      for (int64_t x = 0; x < w; x++) {
        float *to = out_image + (y * w + x) * ci;
        if (y + top < rows && x + left < cols)
          memcpy(to, d + ((y + top) * cols + x + left) * ci, (size_t)ci * sizeof(float));
        else
          memset(to, 0, (size_t)ci * sizeof(float));
      }
    }
  }
  /* over the images in order: the same sums whatever the number of threads */
  sum_images(sums, n, size);
  memcpy(dw, sums, (size_t)(kk * f) * sizeof(float));
  memcpy(db, sums + kk * f, (size_t)f * sizeof(float));
}
