/* The serving engine's C loops: see kernels.py, which compiles this file and checks it against torch. */
#include <stdint.h>
#include <math.h>
#include <string.h>
#include <omp.h>
#define L 16
/* A loop over rows split among nt OpenMP threads (torch's own: see shared_openmp) where it has enough work to
   gain from it; entering even a region of one thread costs microseconds, so small calls never do. */
#define ROWS_OF(m, nt, work, i, call)                                          \
  if ((nt) > 1 && (work) >= 32768) {                                           \
    _Pragma("omp parallel for num_threads(nt) schedule(static)")               \
    for (int64_t i = 0; i < (m); i++) call;                                    \
  } else {                                                                     \
    for (int64_t i = 0; i < (m); i++) call;                                    \
  }
/* Row i of x * inv over its maximum / 127, rounded: int8 at q + i * ldq, or with offset 128 (uint8, what VNNI's
   unsigned-by-signed product takes) and the row padded to ldq with the offset's zero. */
static inline void quantise_row(const float* x, const float* inv, int64_t i, int64_t k, int8_t* q, float* scale,
                                int64_t ldq, int offset) {
  {
    const float* row = x + i * k;
    int8_t* out = q + i * ldq;
    float acc[L] = {0};
    int64_t j = 0;
    for (; j + L <= k; j += L)
      for (int l = 0; l < L; l++) { float v = fabsf(row[j + l] * inv[j + l]); acc[l] = acc[l] > v ? acc[l] : v; }
    float amax = 0.f;
    for (; j < k; j++) { float v = fabsf(row[j] * inv[j]); amax = amax > v ? amax : v; }
    for (int l = 0; l < L; l++) amax = amax > acc[l] ? amax : acc[l];
    float s = (amax > 1e-8f ? amax : 1e-8f) / 127.0f;
    scale[i] = s;
    if (!offset) {
      for (j = 0; j < k; j++) out[j] = (int8_t)nearbyintf(row[j] * inv[j] / s);
    } else {
      uint8_t* u = (uint8_t*)out;
      for (j = 0; j < k; j++) u[j] = (uint8_t)((int)nearbyintf(row[j] * inv[j] / s) + 128);
      for (; j < ldq; j++) u[j] = 128;
    }
  }
}
void lc_quantise(const float* x, const float* inv, int64_t m, int64_t k, int8_t* q, float* scale, int nt) {
  ROWS_OF(m, nt, m * k, i, quantise_row(x, inv, i, k, q, scale, k, 0))
}
static inline void dequantise_part(const int32_t* y, float s, const float* w_scale, int64_t n, float* out) {
  for (int64_t j = 0; j < n; j++) out[j] = (float)y[j] * s * w_scale[j];
}
void lc_dequantise(const int32_t* y, const float* scale, const float* w_scale, int64_t m, int64_t n, float* out,
                   int nt) {
  ROWS_OF(m, nt, m * n, i, dequantise_part(y + i * n, scale[i], w_scale, n, out + i * n))
}
void lc_rmsnorm(const float* x, const float* var, const float* w, float eps, int64_t m, int64_t k, float* out) {
  for (int64_t i = 0; i < m; i++) {
    const float r = 1.0f / sqrtf(var[i] + eps);
    for (int64_t j = 0; j < k; j++) out[i * k + j] = w[j] * (x[i * k + j] * r);
  }
}
void lc_rope(float* t, int64_t stride, const float* cos, const float* sin, int64_t m, int64_t heads, int64_t dim) {
  const int64_t h = dim / 2;
  float tmp[1024];
  for (int64_t i = 0; i < m; i++) {
    const float* c = cos + i * dim;
    const float* s = sin + i * dim;
    for (int64_t a = 0; a < heads; a++) {
      float* p = t + i * stride + a * dim;
      for (int64_t j = 0; j < dim; j++) tmp[j] = p[j];
      for (int64_t j = 0; j < h; j++) p[j] = tmp[j] * c[j] + (-tmp[j + h]) * s[j];
      for (int64_t j = h; j < dim; j++) p[j] = tmp[j] * c[j] + tmp[j - h] * s[j];
    }
  }
}

/* e^x for x <= 0 (Cephes' expf: range reduction by ln 2, degree-5 polynomial; ~1 ulp), vectorisable */
static inline float lc_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = nearbyintf(x * 1.44269504088896341f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = ((int32_t)n + 127) << 23;
  float two;
  memcpy(&two, &bits, sizeof two);
  return y * two;
}
/* Attention of m query tokens, token i at column pos[i] of storage row row[i] (row i where row is NULL: a
   decode step's one token per row; a prefill's tokens share their prompt's row). First every token's new
   key and value (kn, vn: [m, kv_heads, dim] with strides (nr, nh, 1) and (vr, vh, 1)) is written at its
   column; then query head a of token i attends to columns [start, pos[i]] of its row's KV head
   a / (heads / kv_heads), start = pos[i] - window + 1 (0 without a window). q: [m, heads, dim] with strides
   (qr, qh, 1); k, v: the storage [rows, kv_heads, columns, dim] with strides (kr, kh, dim, 1); work:
   [nt, width] scores, a row per thread; out: [m, heads * dim]. One task per (token, KV head): its keys and values are
   read once for the query heads that share them. */
typedef struct {
  const float *q, *kn, *vn;
  void *k, *v;
  int64_t qr, qh, nr, nh, vr, vh, kr, kh;
  const int64_t *pos, *row;
  int64_t window, heads, kv_heads, dim, width, tasks;
  float scaling;
  float *work, *out;
} attend_args;
#ifdef __FLT16_MAX__
typedef _Float16 lc_half_t;
#define LC_HALF 1
#else
typedef uint16_t lc_half_t; /* a compiler without a float16 type (GCC < 12 on x86): no float16 storage */
#define LC_HALF 0
#endif
int lc_half(void) { return LC_HALF; }  /* whether lc_attend takes float16 storage */
/* element idx of a storage of float32, or of float16 (half: half the bytes to read, ~3 decimal digits) */
static inline __attribute__((always_inline)) float kv_at(const void* base, int64_t idx, const int half) {
  return half ? (float)((const lc_half_t*)base)[idx] : ((const float*)base)[idx];
}
#ifdef __AVX512F__
#include <immintrin.h>
static inline __attribute__((always_inline)) __m512 half16(const void* base, int64_t idx) {  /* 16 float16 */
  return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)((const lc_half_t*)base + idx)));
}
#endif
static inline __attribute__((always_inline)) const void* kv_ptr(const void* base, int64_t idx, const int half) {
  return (const char*)base + idx * (half ? 2 : 4);
}
/* where task ih's keys and values begin in the storage, in elements (its token's row, its KV head); -1: no task */
static inline int64_t task_at(const attend_args* A, int64_t ih) {
  if (ih >= A->tasks) return -1;
  const int64_t i = ih / A->kv_heads;
  return (A->row ? A->row[i] : i) * A->kr + (ih % A->kv_heads) * A->kh;
}
static inline __attribute__((always_inline)) void attend_dim(const attend_args* A, int64_t ih, const int64_t dim,
                                                             const int half) {
  const int64_t i = ih / A->kv_heads, h = ih % A->kv_heads, g = A->heads / A->kv_heads;
  const int64_t end = A->pos[i] + 1;
  const int64_t start = A->window > 0 && end > A->window ? end - A->window : 0;
  const int64_t here = task_at(A, ih), at = task_at(A, ih + 1);
  const void* kk = kv_ptr(A->k, here, half);
  const void* vv = kv_ptr(A->v, here, half);
  const void* nk = at < 0 ? 0 : kv_ptr(A->k, at, half);
  const void* nv = at < 0 ? 0 : kv_ptr(A->v, at, half);
  const int64_t line = half ? 32 : 16;  /* elements per cache line */
  for (int64_t a = h * g; a < (h + 1) * g; a++) {
    const float* restrict qq = A->q + i * A->qr + a * A->qh;
    float* restrict s = A->work + omp_get_thread_num() * A->width;  /* this thread's scores */
    float top = -INFINITY;
    for (int64_t j = start; j < end; j++) {
      if (a == h * g && nk) {  /* the next task's keys and values, fetched while this one computes */
        for (int64_t d = 0; d < dim; d += line) {
          __builtin_prefetch(kv_ptr(nk, j * dim + d, half));
          __builtin_prefetch(kv_ptr(nv, j * dim + d, half));
        }
      }
      float acc = 0.f;
#ifdef __AVX512F__
      if (half && dim % 16 == 0) {  /* float16 loads widened 16 at a time (the generic loop stays scalar) */
        __m512 va = _mm512_setzero_ps();
        for (int64_t d = 0; d < dim; d += 16)
          va = _mm512_fmadd_ps(_mm512_loadu_ps(qq + d), half16(kk, j * dim + d), va);
        acc = _mm512_reduce_add_ps(va);
      } else
#endif
      {
        #pragma omp simd reduction(+ : acc)
        for (int64_t d = 0; d < dim; d++) acc = __builtin_fmaf(qq[d], kv_at(kk, j * dim + d, half), acc);
      }
      s[j] = acc * A->scaling;
      top = top > s[j] ? top : s[j];
    }
    float sum = 0.f;
    #pragma omp simd reduction(+ : sum)
    for (int64_t j = start; j < end; j++) {
      s[j] = lc_exp(s[j] - top);
      sum += s[j];
    }
    const float inv = 1.f / sum;
    float o[256];
    for (int64_t d = 0; d < dim; d++) o[d] = 0.f;
    for (int64_t j = start; j < end; j++) {
      const float p = s[j] * inv;
#ifdef __AVX512F__
      if (half && dim % 16 == 0) {
        for (int64_t d = 0; d < dim; d += 16)
          _mm512_storeu_ps(o + d, _mm512_fmadd_ps(_mm512_set1_ps(p), half16(vv, j * dim + d), _mm512_loadu_ps(o + d)));
        continue;
      }
#endif
      #pragma omp simd
      for (int64_t d = 0; d < dim; d++) o[d] = __builtin_fmaf(p, kv_at(vv, j * dim + d, half), o[d]);
    }
    memcpy(A->out + (i * A->heads + a) * dim, o, dim * sizeof(float));
  }
}
#ifdef __AVX512F__
#define HG 4   /* query heads taken together */
#define KB 64  /* keys a block */
/* A float16 store with 64-wide heads (SmolLM2's): the query heads of a KV head in one pass over its keys and one
   over its values, each key and value widened once for up to HG heads, the softmax online over blocks of KB keys
   (scores on the stack, rescaled when a block raises the maximum). Per (key, head) attend_dim widened the key
   again and kept a score row per head: ~2x this in a decode step of 32 rows here. */
static void attend_half64(const attend_args* A, int64_t ih) {
  const int64_t i = ih / A->kv_heads, h = ih % A->kv_heads, g = A->heads / A->kv_heads;
  const int64_t end = A->pos[i] + 1;
  const int64_t start = A->window > 0 && end > A->window ? end - A->window : 0;
  const int64_t here = task_at(A, ih), at = task_at(A, ih + 1);
  const lc_half_t* kk = (const lc_half_t*)A->k + here;
  const lc_half_t* vv = (const lc_half_t*)A->v + here;
  for (int64_t a0 = h * g; a0 < (h + 1) * g; a0 += HG) {
    const int n = (int)((h + 1) * g - a0 < HG ? (h + 1) * g - a0 : HG);
    __m512 q[HG][4], o[HG][4];
    float top[HG], sum[HG], s[HG][KB];
    for (int a = 0; a < n; a++) {
      const float* qq = A->q + i * A->qr + (a0 + a) * A->qh;
      for (int c = 0; c < 4; c++) {
        q[a][c] = _mm512_mul_ps(_mm512_loadu_ps(qq + 16 * c), _mm512_set1_ps(A->scaling));
        o[a][c] = _mm512_setzero_ps();
      }
      top[a] = -INFINITY;
      sum[a] = 0.f;
    }
    for (int64_t j0 = start; j0 < end; j0 += KB) {
      const int64_t nb = end - j0 < KB ? end - j0 : KB;
      for (int64_t j = 0; j < nb; j++) {
        if (at >= 0 && a0 == h * g)  /* the next task's keys and values, fetched while this one computes */
          for (int64_t d = 0; d < 64; d += 32) {
            __builtin_prefetch((const lc_half_t*)A->k + at + (j0 + j) * 64 + d);
            __builtin_prefetch((const lc_half_t*)A->v + at + (j0 + j) * 64 + d);
          }
        const __m512 k0 = half16(kk, (j0 + j) * 64), k1 = half16(kk, (j0 + j) * 64 + 16);
        const __m512 k2 = half16(kk, (j0 + j) * 64 + 32), k3 = half16(kk, (j0 + j) * 64 + 48);
        for (int a = 0; a < n; a++) {
          const __m512 lo = _mm512_fmadd_ps(q[a][1], k1, _mm512_mul_ps(q[a][0], k0));
          const __m512 hi = _mm512_fmadd_ps(q[a][3], k3, _mm512_mul_ps(q[a][2], k2));
          s[a][j] = _mm512_reduce_add_ps(_mm512_add_ps(lo, hi));
        }
      }
      for (int a = 0; a < n; a++) {
        float m = top[a];
        for (int64_t j = 0; j < nb; j++) m = m > s[a][j] ? m : s[a][j];
        const float keep = lc_exp(top[a] - m);  /* what the earlier blocks' sums are worth now */
        top[a] = m;
        float add = 0.f;
        #pragma omp simd reduction(+ : add)
        for (int64_t j = 0; j < nb; j++) {
          s[a][j] = lc_exp(s[a][j] - m);
          add += s[a][j];
        }
        sum[a] = sum[a] * keep + add;
        if (keep != 1.f)
          for (int c = 0; c < 4; c++) o[a][c] = _mm512_mul_ps(o[a][c], _mm512_set1_ps(keep));
      }
      for (int64_t j = 0; j < nb; j++) {
        const __m512 v0 = half16(vv, (j0 + j) * 64), v1 = half16(vv, (j0 + j) * 64 + 16);
        const __m512 v2 = half16(vv, (j0 + j) * 64 + 32), v3 = half16(vv, (j0 + j) * 64 + 48);
        for (int a = 0; a < n; a++) {
          const __m512 p = _mm512_set1_ps(s[a][j]);
          o[a][0] = _mm512_fmadd_ps(p, v0, o[a][0]);
          o[a][1] = _mm512_fmadd_ps(p, v1, o[a][1]);
          o[a][2] = _mm512_fmadd_ps(p, v2, o[a][2]);
          o[a][3] = _mm512_fmadd_ps(p, v3, o[a][3]);
        }
      }
    }
    for (int a = 0; a < n; a++) {
      const __m512 inv = _mm512_set1_ps(1.f / sum[a]);
      float* out = A->out + (i * A->heads + a0 + a) * 64;
      for (int c = 0; c < 4; c++) _mm512_storeu_ps(out + 16 * c, _mm512_mul_ps(o[a][c], inv));
    }
  }
}
#endif
static void attend_one(const attend_args* A, int64_t ih, const int half) {  /* the common head sizes unrolled */
  if (half) {
#ifdef __AVX512F__
    if (A->dim == 64) {
      attend_half64(A, ih);
      return;
    }
#endif
    if (A->dim == 64) attend_dim(A, ih, 64, 1);
    else if (A->dim == 128) attend_dim(A, ih, 128, 1);
    else attend_dim(A, ih, A->dim, 1);
  } else {
    if (A->dim == 64) attend_dim(A, ih, 64, 0);
    else if (A->dim == 128) attend_dim(A, ih, 128, 0);
    else attend_dim(A, ih, A->dim, 0);
  }
}
/* k, v: float32 storage, or float16 where half (the new keys and values rounded to it as they are written) */
void lc_attend(const float* q, int64_t qr, int64_t qh, const float* kn, int64_t nr, int64_t nh, const float* vn,
               int64_t vr, int64_t vh, void* k, void* v, int64_t kr, int64_t kh, const int64_t* pos,
               const int64_t* row, int64_t window, int64_t m, int64_t heads, int64_t kv_heads, int64_t dim,
               float scaling, int64_t width, float* work, float* out, int nt, int half) {
  for (int64_t i = 0; i < m; i++)  /* every new key and value first: a prefill's tokens read each other's */
    for (int64_t h = 0; h < kv_heads; h++) {
      const int64_t at = (row ? row[i] : i) * kr + h * kh + pos[i] * dim;
      const float *kf = kn + i * nr + h * nh, *vf = vn + i * vr + h * vh;
      if (half) {
        lc_half_t *kd = (lc_half_t*)k + at, *vd = (lc_half_t*)v + at;
        for (int64_t d = 0; d < dim; d++) {
          kd[d] = (lc_half_t)kf[d];
          vd[d] = (lc_half_t)vf[d];
        }
      } else {
        memcpy((float*)k + at, kf, dim * sizeof(float));
        memcpy((float*)v + at, vf, dim * sizeof(float));
      }
    }
  const attend_args A = {q, kn, vn, k, v, qr, qh, nr, nh, vr, vh, kr, kh, pos, row, window, heads, kv_heads, dim,
                         width, m * kv_heads, scaling, work, out};
  ROWS_OF(m * kv_heads, nt, m * heads * width * dim / 32, ih, attend_one(&A, ih, half))
}

/* y [m, n] = x [m, k] @ W^T for a W of int8 weights with per-column scales and a few outlier input channels, in
   one call. Each row of x * inv quantised to int8 (as lc_quantise, offset by 128 into q [m, ldq]); the row's
   outlier channels (x's columns idx [o]) to int16 with a scale of their own, xs (amax / lim, pairs in xo [m, op]);
   the int8 product by AVX-512 VNNI (vpdpbusd) on weights packed for it (int8.py's Packed: tiles of QC x 16
   columns, for each 4 input channels the tile's 64-byte vectors in turn), comp = 128 x each column's sum (the
   offset's share, taken back); the outliers' product by vpdpwssd on their int16 weights wo (per column scales
   wo_scale; [op / 2, np, 2]: for each pair of channels, every column's two), whose lim keeps o products in int32.
   Then y = (float)acc * scale * w_scale (lc_dequantise's bits) + (float)acc16 * xs * wo_scale, + bias.
   lc_vnni() says whether this machine's build has it. */
#define QR 8
#define QC 3
static inline void outliers_row(const float* x, int64_t i, int64_t k, const int64_t* idx, int64_t o, int64_t op,
                                float lim, int16_t* xo, float* xs) {
  const float* row = x + i * k;
  float amax = 0.f;
  for (int64_t j = 0; j < o; j++) {
    const float v = fabsf(row[idx[j]]);
    amax = amax > v ? amax : v;
  }
  const float s = amax / lim;
  xs[i] = s;
  for (int64_t j = 0; j < op; j++) xo[i * op + j] = j < o && s > 0.f ? (int16_t)nearbyintf(row[idx[j]] / s) : 0;
}
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512F__)
#include <immintrin.h>
int lc_vnni(void) { return 1; }
typedef struct {
  const float *scale, *w_scale, *wo_scale, *xs, *bias;
  const uint8_t* q;
  const int8_t* wp;
  const int32_t* comp;
  const int16_t *xo, *wo;
  int64_t m, ldq, n, np, op;
  float* y;
} qmm_args;
static inline __attribute__((always_inline)) void qmm_tile(const qmm_args* A, int64_t t, int64_t r0, int rows) {
  const int64_t kg = A->ldq / 4, n0 = t * QC * 16;
  const int8_t* wp = A->wp + t * kg * QC * 64;
  __m512i acc[QR][QC];
  for (int r = 0; r < QR; r++)
    for (int c = 0; c < QC; c++) acc[r][c] = _mm512_setzero_si512();
  const uint8_t* a = A->q + r0 * A->ldq;
  for (int64_t g = 0; g < kg; g++) {
    __m512i w[QC];
    for (int c = 0; c < QC; c++) w[c] = _mm512_loadu_si512(wp + (g * QC + c) * 64);
    for (int r = 0; r < QR; r++)
      if (r < rows) {
        int32_t four;
        memcpy(&four, a + r * A->ldq + g * 4, 4);
        const __m512i b = _mm512_set1_epi32(four);
        for (int c = 0; c < QC; c++) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], b, w[c]);
      }
  }
  /* the sums out of registers at constant places (read at variable ones, the array would live in memory) */
  int32_t sums[QR][QC][16] __attribute__((aligned(64)));
  for (int r = 0; r < QR; r++)
    for (int c = 0; c < QC; c++) _mm512_store_si512(sums[r][c], acc[r][c]);
  for (int c = 0; c < QC; c++) {
    const int64_t col = n0 + c * 16;
    if (col >= A->n) break;
    const __mmask16 mk = A->n - col >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (A->n - col)) - 1);
    __m512i d[QR];
    for (int r = 0; r < QR; r++) d[r] = _mm512_setzero_si512();
    for (int64_t p = 0; p < A->op / 2; p++) {  /* two outlier channels a step: int16 pairs */
      const __m512i wo = _mm512_loadu_si512(A->wo + (p * A->np + col) * 2);
      for (int r = 0; r < QR; r++)
        if (r < rows) {
          int32_t two;
          memcpy(&two, A->xo + (r0 + r) * A->op + 2 * p, 4);
          d[r] = _mm512_dpwssd_epi32(d[r], _mm512_set1_epi32(two), wo);
        }
    }
    const __m512i comp = _mm512_maskz_loadu_epi32(mk, A->comp + col);
    const __m512 ws = _mm512_maskz_loadu_ps(mk, A->w_scale + col);
    const __m512 wos = A->op ? _mm512_maskz_loadu_ps(mk, A->wo_scale + col) : _mm512_setzero_ps();
    const __m512 bias = A->bias ? _mm512_maskz_loadu_ps(mk, A->bias + col) : _mm512_setzero_ps();
    for (int r = 0; r < QR; r++) {
      if (r >= rows) break;
      const int64_t i = r0 + r;
      __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_load_si512(sums[r][c]), comp));
      v = _mm512_mul_ps(_mm512_mul_ps(v, _mm512_set1_ps(A->scale[i])), ws);
      if (A->op) v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(d[r]), _mm512_set1_ps(A->xs[i])), wos));
      if (A->bias) v = _mm512_add_ps(v, bias);
      _mm512_mask_storeu_ps(A->y + i * A->n + col, mk, v);
    }
  }
}
static void qmm_cols(const qmm_args* A, int64_t t) {  /* one column tile, every row */
  int64_t r0 = 0;
  for (; r0 + QR <= A->m; r0 += QR) qmm_tile(A, t, r0, QR);
  if (r0 < A->m) qmm_tile(A, t, r0, (int)(A->m - r0));
}
void lc_qlinear(const float* x, const float* inv, int64_t m, int64_t k, int64_t ldq, uint8_t* q, float* scale,
                const int8_t* wp, const int32_t* comp, const float* w_scale, int64_t n, int64_t np, const int64_t* idx,
                int64_t o, int64_t op, float lim, const int16_t* wo, const float* wo_scale, int16_t* xo, float* xs,
                const float* bias, float* y, int nt) {
  ROWS_OF(m, nt, m * k, i, quantise_row(x, inv, i, k, (int8_t*)q, scale, ldq, 1))
  for (int64_t i = 0; op && i < m; i++) outliers_row(x, i, k, idx, o, op, lim, xo, xs);
  const qmm_args A = {scale, w_scale, wo_scale, xs, bias, q, wp, comp, xo, wo, m, ldq, n, np, op, y};
  const int64_t tiles = (n + QC * 16 - 1) / (QC * 16);
  ROWS_OF(tiles, nt, n * ldq, t, qmm_cols(&A, t))  /* work: the weights read */
}
#else
int lc_vnni(void) { return 0; }
void lc_qlinear(const float* x, const float* inv, int64_t m, int64_t k, int64_t ldq, uint8_t* q, float* scale,
                const int8_t* wp, const int32_t* comp, const float* w_scale, int64_t n, int64_t np, const int64_t* idx,
                int64_t o, int64_t op, float lim, const int16_t* wo, const float* wo_scale, int16_t* xo, float* xs,
                const float* bias, float* y, int nt) {}
#endif
