/* CPU references for the row-wise ops: naive loops, double accumulation. */
#include <math.h>

#include "engine/ops/ref/ref.h"

void ref_rmsnorm(float *y, const float *x, const float *w, uint32_t rows, uint32_t n, float eps) {
  for (uint32_t r = 0; r < rows; r++) {
    const float *xr = x + (uint64_t)r * n;
    double ss = 0;
    for (uint32_t i = 0; i < n; i++) ss += (double)xr[i] * xr[i];
    double scale = 1.0 / sqrt(ss / n + eps);
    for (uint32_t i = 0; i < n; i++) y[(uint64_t)r * n + i] = (float)(xr[i] * scale * w[i]);
  }
}

void ref_layernorm(float *y, const float *x, const float *w, const float *b, uint32_t rows, uint32_t n, float eps) {
  for (uint32_t r = 0; r < rows; r++) {
    const float *xr = x + (uint64_t)r * n;
    double mean = 0, var = 0;
    for (uint32_t i = 0; i < n; i++) mean += xr[i];
    mean /= n;
    for (uint32_t i = 0; i < n; i++) var += (xr[i] - mean) * (xr[i] - mean);
    double scale = 1.0 / sqrt(var / n + eps);
    for (uint32_t i = 0; i < n; i++) y[(uint64_t)r * n + i] = (float)((xr[i] - mean) * scale * w[i] + b[i]);
  }
}

/* The row's maximum, ignoring NaN (-inf for an empty or all-NaN row). */
static double row_max(const float *xr, uint32_t n) {
  double m = -INFINITY;
  for (uint32_t i = 0; i < n; i++)
    if (xr[i] > m) m = xr[i];
  return m;
}

void ref_softmax(float *y, const float *x, uint32_t rows, uint32_t n) {
  for (uint32_t r = 0; r < rows; r++) {
    const float *xr = x + (uint64_t)r * n;
    double m = row_max(xr, n), s = 0;
    for (uint32_t i = 0; i < n; i++) s += exp(xr[i] - m);
    for (uint32_t i = 0; i < n; i++) y[(uint64_t)r * n + i] = (float)(exp(xr[i] - m) / s);
  }
}

/* True when a comes before b in "larger first, NaN last, lower index first on ties" (ia < ib assumed when the
 * values tie, as the callers scan in index order). */
static bool ranks_above(float a, float b) {
  if (isnan(a) || isnan(b)) return !isnan(a) && isnan(b);
  return a > b;
}

void ref_argmax(uint32_t *idx, const float *x, uint32_t rows, uint32_t n) {
  for (uint32_t r = 0; r < rows; r++) {
    const float *xr = x + (uint64_t)r * n;
    uint32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
      if (ranks_above(xr[i], xr[best])) best = i;
    idx[r] = best;
  }
}

void ref_topk(uint32_t *idx, float *val, const float *x, uint32_t rows, uint32_t n, uint32_t k) {
  for (uint32_t r = 0; r < rows; r++) {
    const float *xr = x + (uint64_t)r * n;
    uint32_t *ir = idx + (uint64_t)r * k;
    /* Insertion into a sorted list of k: a later index never displaces an equal value. */
    uint32_t have = 0;
    for (uint32_t i = 0; i < n; i++) {
      uint32_t pos = have;
      while (pos > 0 && ranks_above(xr[i], xr[ir[pos - 1]])) pos--;
      if (pos >= k) continue;
      for (uint32_t j = (have < k ? have : k - 1); j > pos; j--) ir[j] = ir[j - 1];
      ir[pos] = i;
      if (have < k) have++;
    }
    for (uint32_t j = 0; j < k; j++) val[(uint64_t)r * k + j] = xr[ir[j]];
  }
}

void ref_logsumexp(float *lse, float *nll, const float *x, const int32_t *targets, uint32_t rows, uint32_t n) {
  for (uint32_t r = 0; r < rows; r++) {
    const float *xr = x + (uint64_t)r * n;
    double m = row_max(xr, n), s = 0;
    for (uint32_t i = 0; i < n; i++) s += exp(xr[i] - m);
    double l = m + log(s);
    lse[r] = (float)l;
    if (nll && targets) {
      int32_t t = targets[r];
      nll[r] = t >= 0 && (uint32_t)t < n ? (float)(l - xr[t]) : NAN;
    }
  }
}

void ref_cosine(float *out, const float *a, const float *b, uint32_t rows, uint32_t n) {
  for (uint32_t r = 0; r < rows; r++) {
    const float *ar = a + (uint64_t)r * n, *br = b + (uint64_t)r * n;
    double d = 0, aa = 0, bb = 0;
    for (uint32_t i = 0; i < n; i++) {
      d += (double)ar[i] * br[i];
      aa += (double)ar[i] * ar[i];
      bb += (double)br[i] * br[i];
    }
    out[r] = aa > 0 && bb > 0 ? (float)(d / (sqrt(aa) * sqrt(bb))) : 0.0f;
  }
}
