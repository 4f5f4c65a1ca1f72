/* SVG charts: line charts in one or two stacked panels sharing the x axis, grouped bar charts, heat maps. */
#include "jobs/plot.h"

#include "common/fsout.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>

#define W 720.0
#define PANEL_H 240.0
#define LEFT 70.0
#define RIGHT 150.0 /* room for the legend */
#define TOP 56.0
#define GAP 50.0
/* Points drawn as dots too when a curve has at most this many. */
#define DOTS_MAX 64

static const char *const colours[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};

/* Writes s with the XML special characters escaped. */
static void put_text(FILE *f, const char *s) {
  for (; s && *s; s++) {
    if (*s == '&')
      fputs("&amp;", f);
    else if (*s == '<')
      fputs("&lt;", f);
    else if (*s == '>')
      fputs("&gt;", f);
    else if (*s == '"')
      fputs("&quot;", f);
    else
      fputc(*s, f);
  }
}

/* A round tick step (1, 2 or 5 times a power of ten) giving about `ticks` ticks over range. */
static double nice_step(double range, int ticks) {
  if (!(range > 0) || !isfinite(range)) return 1;
  double raw = range / ticks, mag = pow(10, floor(log10(raw))), r = raw / mag;
  return (r <= 1 ? 1 : r <= 2 ? 2 : r <= 5 ? 5 : 10) * mag;
}

/* Decimals that show multiples of step exactly. */
static int step_decimals(double step) {
  int d = (int)ceil(-log10(step) - 1e-9);
  return d < 0 ? 0 : d > 6 ? 6 : d;
}

/* Widens [*lo, *hi] to whole multiples of a round step (about 5 ticks); returns the step. */
static double round_range(double *lo, double *hi) {
  if (!(*hi > *lo)) *hi = *lo + 1;
  double st = nice_step(*hi - *lo, 5);
  *lo = floor(*lo / st + 1e-9) * st;
  *hi = ceil(*hi / st - 1e-9) * st;
  return st;
}

/* The SVG header with the chart's title and subtitle. */
static void head(FILE *f, double width, double height, const char *title, const char *subtitle) {
  fprintf(f,
          "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
          "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
          width, height);
  fprintf(f, "<text x=\"%.0f\" y=\"22\" font-size=\"15\">", LEFT);
  put_text(f, title);
  fprintf(f, "</text>\n<text x=\"%.0f\" y=\"40\" fill=\"#444\">", LEFT);
  put_text(f, subtitle);
  fputs("</text>\n", f);
}

/* A legend entry at row `row` right of a plot area ending at x: a swatch (line or box) and its name. */
static void legend(FILE *f, double x, double y0, int row, const char *colour, bool box, const char *name) {
  double ly = y0 + 14 + 18 * row;
  if (box)
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"20\" height=\"10\" fill=\"%s\" stroke=\"#444\"/>\n", x + 12, ly - 9,
            colour);
  else
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"/>\n", x + 12,
            ly - 4, x + 32, ly - 4, colour);
  fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">", x + 38, ly);
  put_text(f, name);
  fputs("</text>\n", f);
}

/* Horizontal grid lines and labels at the round values of [lo, hi] (step st) of a panel from y0 to y1. */
static void y_ticks(FILE *f, double lo, double hi, double st, double y0, double y1, double x0, double x1) {
  int dec = step_decimals(st);
  for (double v = lo; v <= hi + st * 1e-6; v += st) {
    double y = y1 - (v - lo) / (hi - lo) * (y1 - y0);
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>\n", x0, y, x1, y);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.*f</text>\n", x0 - 6, y + 4, dec,
            fabs(v) < st * 1e-6 ? 0.0 : v);
  }
}

lt_status_t plot_svg_write(const char *path, const plot_spec_t *p, lt_err_t *err) {
  int panels = 1;
  for (size_t c = 0; c < p->n_curves; c++)
    if (p->curves[c].panel == 1) panels = 2;
  double lo[2] = {INFINITY, INFINITY}, hi[2] = {-INFINITY, -INFINITY}, ystep[2];
  for (size_t c = 0; c < p->n_curves; c++)
    for (uint32_t i = 0; i < p->n; i++) {
      double y = p->curves[c].y[i];
      int k = p->curves[c].panel;
      if (!isfinite(y)) continue;
      lo[k] = y < lo[k] ? y : lo[k];
      hi[k] = y > hi[k] ? y : hi[k];
    }
  for (int k = 0; k < 2; k++) {
    if (!isfinite(lo[k])) lo[k] = 0, hi[k] = 1;
    if (!p->fit) lo[k] = lo[k] > 0 ? 0 : lo[k], hi[k] = hi[k] < 0 ? 0 : hi[k];
    ystep[k] = round_range(&lo[k], &hi[k]);
  }
  util_out_t out;
  if (util_out_open(&out, path, 0644, err) != LT_OK) return LT_E_IO;
  FILE *f = out.f;
  double plot_w = W - LEFT - RIGHT, height = TOP + panels * (PANEL_H + GAP) + 10;
  double step = p->n > 1 ? plot_w / (p->n - 1) : 0;
  head(f, W, height, p->title, p->subtitle);
  /* x ticks at round values, about eight of them (every value when there are few). */
  uint32_t xs = p->n > 1 ? (uint32_t)nice_step((double)(p->n - 1), 8) : 1;
  if (xs < 1) xs = 1;
  for (int k = 0; k < panels; k++) {
    double y0 = TOP + k * (PANEL_H + GAP), y1 = y0 + PANEL_H;
#define PX(i) (LEFT + (i)*step)
#define PY(v) (y1 - ((v)-lo[k]) / (hi[k] - lo[k]) * PANEL_H)
    if (p->band_lo >= 0 && p->band_hi >= p->band_lo)
      fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#eeeeee\"/>\n",
              PX(p->band_lo) - step / 2, y0, (p->band_hi - p->band_lo + 1) * step, PANEL_H);
    for (uint32_t i = 0; p->marked && i < p->n; i++)
      if (p->marked[i]) {
        double half = step > 0 ? step / 2 : 4, a = fmax(LEFT, PX(i) - half), z = fmin(LEFT + plot_w, PX(i) + half);
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#f7c6c6\"/>\n", a, y0, z - a,
                PANEL_H);
      }
    y_ticks(f, lo[k], hi[k], ystep[k], y0, y1, LEFT, LEFT + plot_w);
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#444\"/>\n", LEFT, y0,
            plot_w, PANEL_H);
    if (lo[k] < 0 && hi[k] > 0)
      fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#999\" stroke-dasharray=\"3,3\"/>\n",
              LEFT, PY(0.0), LEFT + plot_w, PY(0.0));
    for (uint32_t i = 0; i < p->n; i += xs)
      fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%u</text>\n", PX(i), y1 + 16, i);
    if (p->mark >= 0)
      fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#000\" stroke-width=\"2\"/>\n",
              PX(p->mark), y0, PX(p->mark), y1);
    fprintf(f, "<text transform=\"translate(16,%.1f) rotate(-90)\" text-anchor=\"middle\">", (y0 + y1) / 2);
    put_text(f, p->ylabel[k]);
    fputs("</text>\n", f);
    int row = 0;
    for (size_t c = 0; c < p->n_curves; c++) {
      if (p->curves[c].panel != k) continue;
      const char *col = colours[c % (sizeof colours / sizeof colours[0])];
      uint32_t shown = 0;
      fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", col);
      for (uint32_t i = 0; i < p->n; i++)
        if (isfinite(p->curves[c].y[i])) fprintf(f, "%.1f,%.1f ", PX(i), PY(p->curves[c].y[i])), shown++;
      fputs("\"/>\n", f);
      for (uint32_t i = 0; shown <= DOTS_MAX && i < p->n; i++)
        if (isfinite(p->curves[c].y[i]))
          fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", PX(i), PY(p->curves[c].y[i]), col);
      legend(f, LEFT + plot_w, y0, row++, col, false, p->curves[c].name);
    }
    if (p->marked && k == 0) legend(f, LEFT + plot_w, y0, row++, "#f7c6c6", true, p->marked_label);
#undef PX
#undef PY
  }
  fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", LEFT + plot_w / 2, height - 4);
  put_text(f, p->xlabel);
  fputs("</text>\n</svg>\n", f);
  return util_out_commit(&out, err);
}

lt_status_t plot_loss_write(const char *path, const char *title, const char *subtitle, const double *train,
                            const double *eval, uint32_t n, lt_err_t *err) {
  plot_curve_t curves[2] = {{"train loss", train, 0}, {"eval loss", eval, 0}};
  plot_spec_t spec = {.title = title,
                      .subtitle = subtitle,
                      .xlabel = "step",
                      .ylabel = {"loss", NULL},
                      .n = n,
                      .curves = curves,
                      .n_curves = eval ? 2 : 1,
                      .band_lo = -1,
                      .band_hi = -1,
                      .mark = -1,
                      .fit = true};
  return plot_svg_write(path, &spec, err);
}

lt_status_t plot_bars_write(const char *path, const plot_bars_t *b, lt_err_t *err) {
  double lo = 0, hi = 0;
  for (uint64_t i = 0; i < (uint64_t)b->n_series * b->n_groups; i++)
    if (isfinite(b->v[i])) lo = b->v[i] < lo ? b->v[i] : lo, hi = b->v[i] > hi ? b->v[i] : hi;
  double st = round_range(&lo, &hi);
  util_out_t out;
  if (util_out_open(&out, path, 0644, err) != LT_OK) return LT_E_IO;
  FILE *f = out.f;
  double plot_w = W - LEFT - RIGHT, y0 = TOP, y1 = TOP + PANEL_H, height = y1 + 70;
  head(f, W, height, b->title, b->subtitle);
  y_ticks(f, lo, hi, st, y0, y1, LEFT, LEFT + plot_w);
  double group_w = b->n_groups ? plot_w / b->n_groups : plot_w;
  double bar_w = b->n_series ? group_w * 0.8 / b->n_series : 0;
#define PY(v) (y1 - ((v)-lo) / (hi - lo) * PANEL_H)
  for (uint32_t g = 0; g < b->n_groups; g++) {
    double gx = LEFT + g * group_w + group_w * 0.1;
    for (uint32_t s = 0; s < b->n_series; s++) {
      double v = b->v[(uint64_t)s * b->n_groups + g];
      if (!isfinite(v)) continue;
      double top = PY(v > 0 ? v : 0), bottom = PY(v > 0 ? 0 : v);
      fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>\n", gx + s * bar_w, top,
              bar_w * 0.92, bottom - top, colours[s % (sizeof colours / sizeof colours[0])]);
      fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"10\">%.*f</text>\n",
              gx + s * bar_w + bar_w * 0.46, top - 3, step_decimals(st) + 1, v);
    }
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", LEFT + g * group_w + group_w / 2, y1 + 16);
    put_text(f, b->groups[g]);
    fputs("</text>\n", f);
  }
  if (lo < 0)
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#444\"/>\n", LEFT, PY(0.0),
            LEFT + plot_w, PY(0.0));
#undef PY
  fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#444\"/>\n", LEFT, y0,
          plot_w, PANEL_H);
  fprintf(f, "<text transform=\"translate(16,%.1f) rotate(-90)\" text-anchor=\"middle\">", (y0 + y1) / 2);
  put_text(f, b->ylabel);
  fputs("</text>\n", f);
  for (uint32_t s = 0; s < b->n_series; s++)
    legend(f, LEFT + plot_w, y0, (int)s, colours[s % (sizeof colours / sizeof colours[0])], true, b->series[s]);
  fputs("</svg>\n", f);
  return util_out_commit(&out, err);
}

/* The colour of t in [0, 1]: white to dark blue. */
static void heat_colour(double t, char *buf, size_t n) {
  t = t < 0 ? 0 : t > 1 ? 1 : t;
  snprintf(buf, n, "#%02x%02x%02x", (int)(255 - t * (255 - 8)), (int)(255 - t * (255 - 48)),
           (int)(255 - t * (255 - 107)));
}

lt_status_t plot_heat_write(const char *path, const plot_heat_t *h, lt_err_t *err) {
  double lo = INFINITY, hi = -INFINITY;
  for (uint64_t i = 0; i < (uint64_t)h->rows * h->cols; i++)
    if (isfinite(h->v[i])) lo = h->v[i] < lo ? h->v[i] : lo, hi = h->v[i] > hi ? h->v[i] : hi;
  if (!isfinite(lo)) lo = 0, hi = 1;
  if (lo > 0) lo = 0;
  double st = round_range(&lo, &hi);
  util_out_t out;
  if (util_out_open(&out, path, 0644, err) != LT_OK) return LT_E_IO;
  FILE *f = out.f;
  double plot_w = W - LEFT - RIGHT;
  double cell = h->cols ? plot_w / h->cols : plot_w, cell_h = cell < 28 ? cell : 28;
  double y0 = TOP, y1 = TOP + cell_h * h->rows, height = y1 + 60 > TOP + 200 ? y1 + 60 : TOP + 200;
  head(f, W, height, h->title, h->subtitle);
  char col[16];
  for (uint32_t r = 0; r < h->rows; r++) {
    for (uint32_t c = 0; c < h->cols; c++) {
      double v = h->v[(uint64_t)r * h->cols + c], x = LEFT + c * cell, y = y0 + r * cell_h;
      if (!isfinite(v)) continue;
      heat_colour((v - lo) / (hi - lo), col, sizeof col);
      fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\" stroke=\"#fff\"/>\n", x, y,
              cell, cell_h, col);
      if (h->marked && h->marked[(uint64_t)r * h->cols + c])
        fprintf(f, "<path d=\"M%.1f %.1fL%.1f %.1fM%.1f %.1fL%.1f %.1f\" stroke=\"#d62728\" stroke-width=\"2\"/>\n",
                x + 3, y + 3, x + cell - 3, y + cell_h - 3, x + cell - 3, y + 3, x + 3, y + cell_h - 3);
    }
    if (h->rows <= 64 || r % (h->rows / 32) == 0)
      fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" font-size=\"10\">%u</text>\n", LEFT - 6,
              y0 + r * cell_h + cell_h / 2 + 4, r);
  }
  uint32_t xs = h->cols > 1 ? (uint32_t)nice_step((double)h->cols, 16) : 1;
  for (uint32_t c = 0; c < h->cols; c += xs ? xs : 1)
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"10\">%u</text>\n",
            LEFT + c * cell + cell / 2, y1 + 14, c);
  fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", LEFT + plot_w / 2, y1 + 32);
  put_text(f, h->xlabel);
  fprintf(f, "</text>\n<text transform=\"translate(16,%.1f) rotate(-90)\" text-anchor=\"middle\">", (y0 + y1) / 2);
  put_text(f, h->ylabel);
  fputs("</text>\n", f);
  /* The colour scale: a column of swatches at the round values, labelled. */
  double sx = LEFT + plot_w + 16;
  fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">", sx, y0 + 8);
  put_text(f, h->scale_label);
  fputs("</text>\n", f);
  int row = 0;
  for (double v = lo; v <= hi + st * 1e-6; v += st, row++) {
    heat_colour((v - lo) / (hi - lo), col, sizeof col);
    double y = y0 + 18 + row * 16;
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"20\" height=\"14\" fill=\"%s\" stroke=\"#444\"/>\n", sx, y, col);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\">%.*f</text>\n", sx + 26, y + 11, step_decimals(st), v);
  }
  if (h->marked) {
    double y = y0 + 24 + row * 16;
    fprintf(f, "<path d=\"M%.1f %.1fL%.1f %.1fM%.1f %.1fL%.1f %.1f\" stroke=\"#d62728\" stroke-width=\"2\"/>\n", sx, y,
            sx + 14, y + 14, sx + 14, y, sx, y + 14);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\">", sx + 26, y + 11);
    put_text(f, h->marked_label);
    fputs("</text>\n", f);
  }
  fputs("</svg>\n", f);
  return util_out_commit(&out, err);
}
