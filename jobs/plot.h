/* Small SVG line charts for job artifacts (steer-layers' per-layer curves). */
#ifndef LATHE_PLOT_H
#define LATHE_PLOT_H

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
} plot_spec_t;

/* Writes the chart p as an SVG file at path (each panel's y range spans its curves and 0). */
lt_status_t plot_svg_write(const char *path, const plot_spec_t *p, lt_err_t *err);

#endif
