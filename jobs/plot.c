/* SVG line charts: one or two stacked panels sharing the x axis. */
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
    else
      fputc(*s, f);
  }
}

lt_status_t plot_svg_write(const char *path, const plot_spec_t *p, lt_err_t *err) {
  int panels = 1;
  for (size_t c = 0; c < p->n_curves; c++)
    if (p->curves[c].panel == 1) panels = 2;
  double lo[2] = {0, 0}, hi[2] = {0, 0};
  for (size_t c = 0; c < p->n_curves; c++)
    for (uint32_t i = 0; i < p->n; i++) {
      double y = p->curves[c].y[i];
      int k = p->curves[c].panel;
      if (!isfinite(y)) continue;
      lo[k] = y < lo[k] ? y : lo[k];
      hi[k] = y > hi[k] ? y : hi[k];
    }
  for (int k = 0; k < 2; k++) {
    double pad = (hi[k] - lo[k]) * 0.08 + 1e-9;
    lo[k] -= pad, hi[k] += pad;
  }
  util_out_t out;
  if (util_out_open(&out, path, 0644, err) != LT_OK) return LT_E_IO;
  FILE *f = out.f;
  double plot_w = W - LEFT - RIGHT, height = TOP + panels * (PANEL_H + GAP) + 10;
  double step = p->n > 1 ? plot_w / (p->n - 1) : 0;
  fprintf(f,
          "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
          "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
          W, height);
  fprintf(f, "<text x=\"%.0f\" y=\"22\" font-size=\"15\">", LEFT);
  put_text(f, p->title);
  fprintf(f, "</text>\n<text x=\"%.0f\" y=\"40\" fill=\"#444\">", LEFT);
  put_text(f, p->subtitle);
  fputs("</text>\n", f);
  for (int k = 0; k < panels; k++) {
    double y0 = TOP + k * (PANEL_H + GAP), y1 = y0 + PANEL_H;
#define PX(i) (LEFT + (i)*step)
#define PY(v) (y1 - ((v)-lo[k]) / (hi[k] - lo[k]) * PANEL_H)
    if (p->band_lo >= 0 && p->band_hi >= p->band_lo)
      fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#eeeeee\"/>\n",
              PX(p->band_lo) - step / 2, y0, (p->band_hi - p->band_lo + 1) * step, PANEL_H);
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#444\"/>\n", LEFT, y0,
            plot_w, PANEL_H);
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#999\" stroke-dasharray=\"3,3\"/>\n",
            LEFT, PY(0.0), LEFT + plot_w, PY(0.0));
    for (int t = 0; t <= 4; t++) {
      double v = lo[k] + (hi[k] - lo[k]) * t / 4;
      fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>\n", LEFT - 6, PY(v) + 4, v);
    }
    for (uint32_t i = 0; i < p->n; i++)
      fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%u</text>\n", PX(i), y1 + 16, i);
    if (p->mark >= 0)
      fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#000\" stroke-width=\"2\"/>\n",
              PX(p->mark), y0, PX(p->mark), y1);
    fprintf(f, "<text transform=\"translate(16,%.1f) rotate(-90)\" text-anchor=\"middle\">", (y0 + y1) / 2);
    put_text(f, p->ylabel[k]);
    fputs("</text>\n", f);
    int legend = 0;
    for (size_t c = 0; c < p->n_curves; c++) {
      if (p->curves[c].panel != k) continue;
      const char *col = colours[c % (sizeof colours / sizeof colours[0])];
      fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", col);
      for (uint32_t i = 0; i < p->n; i++)
        if (isfinite(p->curves[c].y[i])) fprintf(f, "%.1f,%.1f ", PX(i), PY(p->curves[c].y[i]));
      fputs("\"/>\n", f);
      for (uint32_t i = 0; i < p->n; i++)
        if (isfinite(p->curves[c].y[i]))
          fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", PX(i), PY(p->curves[c].y[i]), col);
      double ly = y0 + 14 + 18 * legend++;
      fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"/>\n",
              LEFT + plot_w + 12, ly - 4, LEFT + plot_w + 32, ly - 4, col);
      fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">", LEFT + plot_w + 38, ly);
      put_text(f, p->curves[c].name);
      fputs("</text>\n", f);
    }
#undef PX
#undef PY
  }
  fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", LEFT + plot_w / 2, height - 4);
  put_text(f, p->xlabel);
  fputs("</text>\n</svg>\n", f);
  return util_out_commit(&out, err);
}
