/* CPU references of the backward passes and the optimiser (ref_grad.h). */
#include "engine/ops/ref/ref_grad.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ops/quant.h"
#include "engine/ops/ref/ref.h"

void ref_matmul_dx(float *dx, const float *dy, const void *w, lt_dtype_t wtype, uint32_t M, uint32_t N, uint32_t K,
                   bool accumulate) {
  for (uint32_t m = 0; m < M; m++)
    for (uint32_t k = 0; k < K; k++) {
      double s = 0;
      for (uint32_t n = 0; n < N; n++)
        s += (double)dy[(uint64_t)m * N + n] * ref_weight_at(w, wtype, (uint64_t)n * K + k);
      float *o = &dx[(uint64_t)m * K + k];
      *o = (float)(accumulate ? *o + s : s);
    }
}

void ref_matmul_dx_q(float *dx, const float *dy, const uint8_t *q, const uint16_t *scales, uint32_t bits,
                     uint32_t group, uint32_t M, uint32_t N, uint32_t K, bool accumulate) {
  for (uint32_t m = 0; m < M; m++)
    for (uint32_t k = 0; k < K; k++) {
      double s = 0;
      for (uint32_t n = 0; n < N; n++)
        s += (double)dy[(uint64_t)m * N + n] * quant_weight(q, scales, bits, group, K, n, k);
      float *o = &dx[(uint64_t)m * K + k];
      *o = (float)(accumulate ? *o + s : s);
    }
}

void ref_matmul_dw(float *dw, const float *dy, const float *x, uint32_t M, uint32_t N, uint32_t K, bool accumulate) {
  for (uint32_t n = 0; n < N; n++)
    for (uint32_t k = 0; k < K; k++) {
      double s = 0;
      for (uint32_t m = 0; m < M; m++) s += (double)dy[(uint64_t)m * N + n] * x[(uint64_t)m * K + k];
      float *o = &dw[(uint64_t)n * K + k];
      *o = (float)(accumulate ? *o + s : s);
    }
}

void ref_rmsnorm_backward(float *dx, float *dw, const float *g, const float *x, const float *w, uint32_t rows,
                          uint32_t n, float eps) {
  double *dws = calloc(n, sizeof *dws);
  for (uint32_t r = 0; r < rows; r++) {
    const float *xr = x + (uint64_t)r * n, *gr = g + (uint64_t)r * n;
    double ss = 0, dot = 0;
    for (uint32_t i = 0; i < n; i++) {
      ss += (double)xr[i] * xr[i];
      dot += (double)w[i] * gr[i] * xr[i];
    }
    double inv = 1.0 / sqrt(ss / n + eps);
    for (uint32_t i = 0; i < n; i++) {
      dx[(uint64_t)r * n + i] += (float)(inv * w[i] * gr[i] - xr[i] * inv * inv * inv * dot / n);
      if (dws) dws[i] += (double)gr[i] * xr[i] * inv;
    }
  }
  for (uint32_t i = 0; dw && dws && i < n; i++) dw[i] += (float)dws[i];
  free(dws);
}

void ref_rope_backward(float *dx, const int32_t *pos, uint32_t rows, uint32_t n_heads, uint32_t head_dim,
                       uint32_t rot_dim, bool neox, double theta, const rope_scaling_t *scaling) {
  /* The inverse rotation is the rotation by minus the angle: the same reference at negated positions. */
  int32_t *neg = malloc((rows ? rows : 1) * sizeof *neg);
  if (!neg) return;
  for (uint32_t r = 0; r < rows; r++) neg[r] = -pos[r];
  ref_rope(dx, neg, rows, n_heads, head_dim, rot_dim, neox, theta, scaling);
  free(neg);
}

/* Softmax probabilities of query t, head h over keys 0..last (p[0..last]; last is t, or T - 1 for
 * ATTN_BIDIRECTIONAL), 0 for the keys before a sliding window of `window` keys (0: none), the scores soft-capped when softcap > 0 (dc[j], when dc is not NULL, gets the cap's
 * derivative at key j); returns the log-sum-exp. */
static double attn_probs(double *p, double *dc, const float *q, const float *k, uint32_t t, uint32_t last, uint32_t h,
                         uint32_t H, uint32_t KV, uint32_t hd, uint32_t window, float scale, float softcap) {
  if (window == ATTN_BIDIRECTIONAL) window = 0;
  uint32_t g = h / (H / KV), j0 = window && t + 1 > window ? t + 1 - window : 0;
  const float *qv = q + ((uint64_t)t * H + h) * hd;
  double mx = -INFINITY;
  for (uint32_t j = 0; j < j0; j++) p[j] = -INFINITY;
  for (uint32_t j = j0; j <= last; j++) {
    const float *kv = k + ((uint64_t)j * KV + g) * hd;
    double s = 0;
    for (uint32_t d = 0; d < hd; d++) s += (double)qv[d] * kv[d];
    p[j] = s * scale;
    if (softcap > 0) {
      double th = tanh(p[j] / softcap);
      p[j] = softcap * th;
      if (dc) dc[j] = 1 - th * th;
    } else if (dc)
      dc[j] = 1;
    if (p[j] > mx) mx = p[j];
  }
  double sum = 0;
  for (uint32_t j = 0; j <= last; j++) sum += exp(p[j] - mx);
  for (uint32_t j = 0; j <= last; j++) p[j] = exp(p[j] - mx) / sum;
  return mx + log(sum);
}

void ref_attention_lse(float *out, float *lse, const float *q, const float *k, const float *v, uint32_t T,
                       uint32_t n_heads, uint32_t n_kv_heads, uint32_t head_dim, uint32_t window, float scale,
                       float softcap) {
  double *p = malloc((T ? T : 1) * sizeof *p);
  uint32_t H = n_heads, KV = n_kv_heads, hd = head_dim;
  for (uint32_t t = 0; p && t < T; t++)
    for (uint32_t h = 0; h < H; h++) {
      uint32_t last = window == ATTN_BIDIRECTIONAL ? T - 1 : t;
      lse[(uint64_t)t * H + h] = (float)attn_probs(p, NULL, q, k, t, last, h, H, KV, hd, window, scale, softcap);
      uint32_t g = h / (H / KV);
      for (uint32_t d = 0; d < hd; d++) {
        double s = 0;
        for (uint32_t j = 0; j <= last; j++) s += p[j] * v[((uint64_t)j * KV + g) * hd + d];
        out[((uint64_t)t * H + h) * hd + d] = (float)s;
      }
    }
  free(p);
}

void ref_attention_backward(float *dq, float *dk, float *dv, const float *q, const float *k, const float *v,
                            const float *dout, uint32_t T, uint32_t n_heads, uint32_t n_kv_heads, uint32_t head_dim,
                            uint32_t window, float scale, float softcap) {
  uint32_t H = n_heads, KV = n_kv_heads, hd = head_dim;
  uint64_t nq = (uint64_t)T * H * hd, nk = (uint64_t)T * KV * hd;
  double *p = malloc((T ? T : 1) * sizeof *p), *dp = malloc((T ? T : 1) * sizeof *dp),
         *dc = malloc((T ? T : 1) * sizeof *dc);
  double *aq = calloc(nq + 1, sizeof *aq), *ak = calloc(nk + 1, sizeof *ak), *av = calloc(nk + 1, sizeof *av);
  for (uint32_t t = 0; p && dp && dc && aq && ak && av && t < T; t++)
    for (uint32_t h = 0; h < H; h++) {
      uint32_t last = window == ATTN_BIDIRECTIONAL ? T - 1 : t;
      attn_probs(p, dc, q, k, t, last, h, H, KV, hd, window, scale, softcap);
      uint32_t g = h / (H / KV);
      const float *go = dout + ((uint64_t)t * H + h) * hd, *qv = q + ((uint64_t)t * H + h) * hd;
      /* out = sum_j p_j v_j: dp_j = dout . v_j; ds_j = p_j (dp_j - sum_i p_i dp_i); s_j = scale q . k_j. */
      double dsum = 0;
      for (uint32_t j = 0; j <= last; j++) {
        const float *vj = v + ((uint64_t)j * KV + g) * hd;
        double s = 0;
        for (uint32_t d = 0; d < hd; d++) s += (double)go[d] * vj[d];
        dp[j] = s;
        dsum += p[j] * s;
      }
      for (uint32_t j = 0; j <= last; j++) {
        double ds = p[j] * (dp[j] - dsum) * dc[j] * scale;
        const float *kj = k + ((uint64_t)j * KV + g) * hd;
        for (uint32_t d = 0; d < hd; d++) {
          aq[((uint64_t)t * H + h) * hd + d] += ds * kj[d];
          ak[((uint64_t)j * KV + g) * hd + d] += ds * qv[d];
          av[((uint64_t)j * KV + g) * hd + d] += p[j] * go[d];
        }
      }
    }
  for (uint64_t i = 0; aq && i < nq; i++) dq[i] = (float)aq[i];
  for (uint64_t i = 0; ak && av && i < nk; i++) dk[i] = (float)ak[i], dv[i] = (float)av[i];
  free(p), free(dp), free(dc), free(aq), free(ak), free(av);
}

void ref_swiglu_backward(float *dgate, float *dup, const float *dy, const float *gate, const float *up, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) {
    double a = gate[i], s = 1.0 / (1.0 + exp(-a));
    dgate[i] = (float)(dy[i] * (double)up[i] * s * (1.0 + a * (1.0 - s)));
    dup[i] = (float)(dy[i] * a * s);
  }
}

void ref_geglu_backward(float *dgate, float *dup, const float *dy, const float *gate, const float *up, uint32_t n) {
  const double c = 0.7978845608028654;
  for (uint32_t i = 0; i < n; i++) {
    double a = gate[i], t = tanh(c * (a + 0.044715 * a * a * a));
    double g = 0.5 * (1 + t) + 0.5 * a * (1 - t * t) * c * (1 + 3 * 0.044715 * a * a);
    dgate[i] = (float)(dy[i] * (double)up[i] * g);
    dup[i] = (float)(dy[i] * 0.5 * a * (1 + t));
  }
}

void ref_embed_backward(float *dtable, const float *dy, const int32_t *ids, uint32_t n_rows, uint32_t dim,
                        uint32_t table_rows) {
  for (uint32_t r = 0; r < n_rows; r++) {
    if (ids[r] < 0 || (uint32_t)ids[r] >= table_rows) continue;
    for (uint32_t c = 0; c < dim; c++) dtable[(uint64_t)ids[r] * dim + c] += dy[(uint64_t)r * dim + c];
  }
}

void ref_cross_entropy(float *nll, float *dlogits, const float *logits, const int32_t *targets, const float *weights,
                       uint32_t rows, uint32_t n) {
  for (uint32_t r = 0; r < rows; r++) {
    const float *x = logits + (uint64_t)r * n;
    double mx = -INFINITY, sum = 0;
    for (uint32_t j = 0; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    for (uint32_t j = 0; j < n; j++) sum += exp(x[j] - mx);
    double lse = mx + log(sum);
    nll[r] = (float)(lse - x[targets[r]]);
    for (uint32_t j = 0; dlogits && j < n; j++)
      dlogits[(uint64_t)r * n + j] = (float)((exp(x[j] - lse) - (j == (uint32_t)targets[r])) * weights[r]);
  }
}

/* log softmax(x / T)_j into out[n]. */
static void log_softmax_t(double *out, const float *x, uint32_t n, double T) {
  double mx = -INFINITY, sum = 0;
  for (uint32_t j = 0; j < n; j++) mx = x[j] / T > mx ? x[j] / T : mx;
  for (uint32_t j = 0; j < n; j++) sum += exp(x[j] / T - mx);
  for (uint32_t j = 0; j < n; j++) out[j] = x[j] / T - mx - log(sum);
}

void ref_kd(float *loss, float *dstudent, const float *student, const float *teacher, const float *weights,
            uint32_t rows, uint32_t n, float temperature) {
  double *ls = malloc((n ? n : 1) * sizeof *ls), *lt = malloc((n ? n : 1) * sizeof *lt), T = temperature;
  for (uint32_t r = 0; ls && lt && r < rows; r++) {
    log_softmax_t(ls, student + (uint64_t)r * n, n, T);
    log_softmax_t(lt, teacher + (uint64_t)r * n, n, T);
    double kl = 0;
    for (uint32_t j = 0; j < n; j++) {
      kl += exp(lt[j]) * (lt[j] - ls[j]);
      if (dstudent) dstudent[(uint64_t)r * n + j] = (float)(weights[r] * T * (exp(ls[j]) - exp(lt[j])));
    }
    loss[r] = (float)(T * T * kl);
  }
  free(ls), free(lt);
}

void ref_atkd(float *loss, float *dstudent, const float *student, const float *teacher, const int32_t *targets,
              const float *weights, uint32_t rows, uint32_t n, float temperature) {
  double *ls = malloc((n ? n : 1) * sizeof *ls), *lt = malloc((n ? n : 1) * sizeof *lt), T = temperature;
  for (uint32_t r = 0; ls && lt && r < rows; r++) {
    log_softmax_t(ls, student + (uint64_t)r * n, n, T);
    log_softmax_t(lt, teacher + (uint64_t)r * n, n, T);
    uint32_t g = (uint32_t)targets[r];
    double qg = exp(ls[g]), pg = exp(lt[g]);
    double tckd = pg * log(pg / qg) + (1 - pg) * log((1 - pg) / (1 - qg)), nckd = 0;
    for (uint32_t j = 0; j < n; j++) {
      if (j == g) continue;
      double pt = exp(lt[j]) / (1 - pg), ps = exp(ls[j]) / (1 - qg);
      nckd += pt * log(pt / ps);
    }
    loss[2 * r] = (float)(T * T * tckd);
    loss[2 * r + 1] = (float)(T * T * nckd);
    if (!dstudent) continue;
    /* d/ds_j of T^2 (wt TCKD + wn NCKD), with z = s / T: TCKD's is (qg - pg)(1[j = g] - (1 - 1[j = g]) ps_j) and
     * NCKD's (ps_j - pt_j) off the target, both times T. */
    double wt = weights[2 * r], wn = weights[2 * r + 1];
    for (uint32_t j = 0; j < n; j++) {
      double d;
      if (j == g) {
        d = wt * (qg - pg);
      } else {
        double pt = exp(lt[j]) / (1 - pg), ps = exp(ls[j]) / (1 - qg);
        d = wn * (ps - pt) - wt * (qg - pg) * ps;
      }
      dstudent[(uint64_t)r * n + j] = (float)(T * d);
    }
  }
  free(ls), free(lt);
}

void ref_adamw(float *p, const float *g, float *m, float *v, uint32_t n, const adamw_params_t *a) {
  double c1 = 1.0 - pow(a->beta1, a->step), c2 = 1.0 - pow(a->beta2, a->step);
  for (uint32_t i = 0; i < n; i++) {
    double gi = (double)g[i] * a->grad_scale;
    double mi = a->beta1 * (double)m[i] + (1.0 - a->beta1) * gi;
    double vi = a->beta2 * (double)v[i] + (1.0 - a->beta2) * gi * gi;
    m[i] = (float)mi;
    v[i] = (float)vi;
    p[i] = (float)(p[i] - a->lr * ((mi / c1) / (sqrt(vi / c2) + a->eps) + a->weight_decay * (double)p[i]));
  }
}

void ref_layernorm_backward(float *dx, float *dw, float *db, const float *g, const float *x, const float *w,
                            uint32_t rows, uint32_t n, float eps) {
  for (uint32_t r = 0; r < rows; r++) {
    const float *xr = x + (uint64_t)r * n, *gr = g + (uint64_t)r * n;
    double mean = 0, var = 0, mg = 0, mgx = 0;
    for (uint32_t i = 0; i < n; i++) mean += xr[i];
    mean /= n;
    for (uint32_t i = 0; i < n; i++) var += (xr[i] - mean) * (xr[i] - mean);
    double inv = 1.0 / sqrt(var / n + eps);
    for (uint32_t i = 0; i < n; i++) {
      double xh = (xr[i] - mean) * inv, gw = (double)w[i] * gr[i];
      mg += gw, mgx += gw * xh;
    }
    mg /= n, mgx /= n;
    for (uint32_t i = 0; i < n; i++) {
      double xh = (xr[i] - mean) * inv;
      dx[(uint64_t)r * n + i] += (float)(inv * ((double)w[i] * gr[i] - mg - xh * mgx));
      if (dw) dw[i] += (float)(gr[i] * xh);
      if (db) db[i] += gr[i];
    }
  }
}

void ref_gelu_erf(float *y, const float *a, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) y[i] = (float)(0.5 * a[i] * (1.0 + erf(a[i] / sqrt(2.0))));
}

void ref_gelu_erf_backward(float *dx, const float *dy, const float *x, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) {
    double v = x[i];
    dx[i] = (float)(dy[i] * (0.5 * (1.0 + erf(v / sqrt(2.0))) + v * exp(-0.5 * v * v) / sqrt(2.0 * M_PI)));
  }
}
