/* Small SVG charts for job artifacts: line charts (loss curves, per-layer scores), grouped bar charts (steered vs
 * plain) and heat maps (expert usage). Axis ticks fall on round numbers (1, 2 or 5 times a power of ten). */
#ifndef LATHE_PLOT_H
#define LATHE_PLOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

/* One curve: y[n] against x = 0..n-1 (NaN: no point there), drawn in panel 0 (top) or 1 (below it). */
typedef struct plot_curve {
  const char *name;
  const double *y;
  int panel;
} plot_curve_t;

typedef struct plot_spec {
  const char *title, *subtitle, *xlabel;
  const char *ylabel[2]; /* per panel */
  uint32_t n;            /* points per curve */
  const plot_curve_t *curves;
  size_t n_curves;
  int band_lo, band_hi; /* x range shaded in every panel (-1: none) */
  int mark;             /* x of a vertical marker line (-1: none) */
  const bool *marked;   /* [n] or NULL: x values hatched in every panel (dropped layers), named in the legend */
  const char *marked_label;
  bool fit; /* the y range fits the curves alone (default: it also spans 0) */
} plot_spec_t;

/* Writes the chart p as an SVG file at path. */
lt_status_t plot_svg_write(const char *path, const plot_spec_t *p, lt_err_t *err);

/* Writes a loss chart at path: train[n] and, when not NULL, eval[n] against the step (NaN: none at that step), the
 * y range fitted to them. */
lt_status_t plot_loss_write(const char *path, const char *title, const char *subtitle, const double *train,
                            const double *eval, uint32_t n, lt_err_t *err);

/* A grouped bar chart: for each group (a label under the axis) one bar per series (named in the legend). */
typedef struct plot_bars {
  const char *title, *subtitle, *ylabel;
  uint32_t n_groups, n_series;
  const char *const *groups; /* [n_groups] */
  const char *const *series; /* [n_series] */
  const double *v;           /* [n_series * n_groups]: series s, group g at v[s * n_groups + g] (NaN: no bar) */
} plot_bars_t;

/* Writes the bar chart b as an SVG file at path (the y axis starts at 0 or below). */
lt_status_t plot_bars_write(const char *path, const plot_bars_t *b, lt_err_t *err);

/* A heat map of rows x cols values, white (the lowest) to dark blue (the highest), with a labelled colour scale;
 * marked cells are crossed out and named in the legend. */
typedef struct plot_heat {
  const char *title, *subtitle, *xlabel, *ylabel, *scale_label;
  uint32_t rows, cols;
  const double *v;    /* [rows * cols], row-major (NaN: an empty cell) */
  const bool *marked; /* [rows * cols] or NULL */
  const char *marked_label;
} plot_heat_t;

/* Writes the heat map h as an SVG file at path. */
lt_status_t plot_heat_write(const char *path, const plot_heat_t *h, lt_err_t *err);

#endif
