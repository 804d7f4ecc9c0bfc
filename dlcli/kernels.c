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
 * 2. dlcli_convpool_{forward,backward}_f32
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

int dlcli_kernels_version(void) { return 5; }

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

#define LOADV(T, p) ({ T v_; memcpy(&v_, (p), sizeof v_); v_; })
#define STOREV(p, v) do { __typeof__(v) v_ = (v); memcpy((p), &v_, sizeof v_); } while (0)
#define BLENDV(IT, mask, a, b) ((__typeof__(a))(((IT)(a) & (mask)) | ((IT)(b) & ~(mask))))
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
 * adds compile time (the whole file: ~1.0 s with these, 1.6 s with the 8-wide ones too). */
#define DLCLI_CONVPOOL_IMAGE(L, VT, IT, UT)                                                    \
  static inline __attribute__((always_inline)) void convpool_forward_image_##L(              \
      const float *p, const float *wt, const float *bias, float *out, uint8_t *code,           \
      int64_t f, const int64_t kh, const int64_t kw, const int64_t ci, int64_t oh,             \
      int64_t ow, int64_t cols, int relu) {                                                    \
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
          STOREV(out + e + g, best);                                                            \
          STOREV(code + e + g, __builtin_convertvector(won, UT));                               \
        }                                                                                       \
      }                                                                                         \
    }                                                                                           \
  }                                                                                             \
                                                                                                \
  /* sums: kh x kw x ci x f weight gradient sums, then f bias ones, for this image */          \
  static inline __attribute__((always_inline)) void convpool_backward_image_##L(             \
      const float *p, const float *grad, const float *out, const uint8_t *code, float *sums,   \
      int64_t f, const int64_t kh, const int64_t kw, const int64_t ci, int64_t oh,             \
      int64_t ow, int64_t cols, int relu) {                                                    \
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
            VT gv = LOADV(VT, grad + e);                                                        \
            if (relu) gv = (VT)((IT)gv & ~(LOADV(VT, out + e) <= 0.0f));                        \
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

DLCLI_CONVPOOL_IMAGE(8, f8, i8, u8x8)
DLCLI_CONVPOOL_IMAGE(16, f16, i16, u8x16)

/* Calls CALL(kh, kw, ci) with constants for the common shapes, else with the variables. */
#define DLCLI_SPECIALISED(CALL)                                                                 \
  if (kh == 3 && kw == 3 && ci == 1) CALL(3, 3, 1)                                             \
  else if (kh == 5 && kw == 5 && ci == 1) CALL(5, 5, 1)                                        \
  else if (kh == 3 && kw == 3 && ci == 3) CALL(3, 3, 3)                                        \
  else CALL(kh, kw, ci)

/* x: n x h x w x ci; padded: n x (2 oh + kh - 1) x (2 ow + kw - 1) x ci, written here (the
 * images zero-padded, for the backward); wt: kh x kw x ci x f; bias: f or NULL; out, code:
 * n x oh x ow x f, the pooled map of the convolution of x shifted down by top and right by
 * left (its padding). */
void dlcli_convpool_forward_f32(const float *x, float *padded, const float *wt,
                                const float *bias, float *out, uint8_t *code, int64_t n,
                                int64_t h, int64_t w, int64_t ci, int64_t f, int64_t kh,
                                int64_t kw, int64_t top, int64_t left, int64_t oh, int64_t ow,
                                int relu) {
  const int64_t rows = 2 * oh + kh - 1, cols = 2 * ow + kw - 1;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n; b++) {
    float *p = padded + b * rows * cols * ci;
    pad_image(x + b * h * w * ci, p, h, w, ci, rows, cols, top, left);
    float *o = out + b * oh * ow * f;
    uint8_t *k = code + b * oh * ow * f;
#define DLCLI_FORWARD(KH, KW, CI)                                                              \
      convpool_forward_image_16(p, wt, bias, o, k, f, KH, KW, CI, oh, ow, cols, relu);
    if (f % 16)
      convpool_forward_image_8(p, wt, bias, o, k, f, kh, kw, ci, oh, ow, cols, relu);
    else
      DLCLI_SPECIALISED(DLCLI_FORWARD)
  }
}

/* padded, grad (of out), out, code: as the forward's; sums: n x (kh kw ci f + f) scratch;
 * dw: f x kh x kw x ci (torch's channels_last weight); db: f. */
void dlcli_convpool_backward_f32(const float *padded, const float *grad, const float *out,
                                 const uint8_t *code, float *sums, float *dw, float *db,
                                 int64_t n, int64_t ci, int64_t f, int64_t kh, int64_t kw,
                                 int64_t oh, int64_t ow, int relu) {
  const int64_t rows = 2 * oh + kh - 1, cols = 2 * ow + kw - 1, kk = kh * kw * ci;
  const int64_t size = kk * f + f;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n; b++) {
    const float *p = padded + b * rows * cols * ci;
    const int64_t at = b * oh * ow * f;
    float *s = sums + b * size;
#define DLCLI_BACKWARD(KH, KW, CI)                                                              \
      convpool_backward_image_16(p, grad + at, out + at, code + at, s, f, KH, KW, CI, oh, ow,  \
                                 cols, relu);
    if (f % 16)
      convpool_backward_image_8(p, grad + at, out + at, code + at, s, f, kh, kw, ci, oh, ow, cols,
                                relu);
    else
      DLCLI_SPECIALISED(DLCLI_BACKWARD)
  }
  /* over the images in order: the same sums whatever the number of threads */
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < size; t++) {
    float total = 0.0f;
    for (int64_t b = 0; b < n; b++) total += sums[b * size + t];
    if (t < kk * f)
      dw[(t % f) * kk + t / f] = total;
    else
      db[t - kk * f] = total;
  }
}
