/* Outputs are never written through a link someone planted: every writer creates a new file under a unique name in
 * the destination's folder and renames it into place (common/fsout.h), so a symbolic link at the destination is
 * replaced, not followed, and a link at the old predictable "<path>.tmp" is never touched; logs opened for
 * appending refuse a link. The victims' bytes are checked after each writer. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fsout.h"
#include "common/util.h"
#include "engine/model/safetensors.h"
#include "engine/text/jsonl.h"
#include "jobs/plot.h"
#include "jobs/resume.h"

static char dir[] = "/tmp/lathe-outputs-XXXXXX";
static char victim[300];

static void setup(void) {
  strcpy(dir, "/tmp/lathe-outputs-XXXXXX");
  cr_assert(mkdtemp(dir));
  snprintf(victim, sizeof victim, "%s/victim", dir);
  FILE *f = fopen(victim, "w");
  cr_assert(f);
  fputs("precious\n", f);
  fclose(f);
}

static void teardown(void) { util_rm_rf(dir, NULL); }

TestSuite(outputs, .init = setup, .fini = teardown);

/* dir/name, made a symbolic link to the victim; and dir/name.tmp too. Returns dir/name in path. */
static void plant(const char *name, char *path, size_t n) {
  snprintf(path, n, "%s/%s", dir, name);
  cr_assert_eq(symlink(victim, path), 0);
  char tmp[400];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  cr_assert_eq(symlink(victim, tmp), 0);
}

/* The victim still holds its bytes, path is a regular file now, and no temporary is left in dir. */
static void check_safe(const char *path) {
  char buf[64] = {0};
  FILE *f = fopen(victim, "r");
  cr_assert(f);
  cr_assert(fgets(buf, sizeof buf, f));
  fclose(f);
  cr_assert_str_eq(buf, "precious\n", "the victim was written through a link");
  struct stat sb;
  cr_assert_eq(lstat(path, &sb), 0);
  cr_assert(S_ISREG(sb.st_mode), "%s is not a regular file", path);
  char cmd[400], out[64] = {0};
  snprintf(cmd, sizeof cmd, "ls -A %s | grep -c '^\\.' || true", dir);
  FILE *p = popen(cmd, "r");
  cr_assert(p && fgets(out, sizeof out, p));
  pclose(p);
  cr_assert_eq(atoi(out), 0, "a temporary file is left in %s", dir);
}

Test(outputs, the_writers_replace_a_planted_link_and_never_follow_it) {
  char path[300];
  lt_err_t err = {0};
  /* safetensors */
  plant("model.safetensors", path, sizeof path);
  float v[4] = {1, 2, 3, 4};
  ft_tensor_t t = {.name = "w", .dtype = FT_F32, .n_dims = 2, .shape = {2, 2}, .n_elems = 4, .nbytes = 16, .data = v};
  cr_assert_eq(st_write(path, &t, 1, NULL, 0, &err), LT_OK, "%s", err.msg);
  check_safe(path);
  /* JSON files (config.json, adapter_config.json, reports) */
  plant("config.json", path, sizeof path);
  json_t *j = json_pack("{s:i}", "hidden_size", 8);
  cr_assert_eq(jsonl_write_file(path, j, JSON_COMPACT, &err), LT_OK, "%s", err.msg);
  json_decref(j);
  check_safe(path);
  /* plots */
  plant("loss.svg", path, sizeof path);
  double y[3] = {3, 2, 1};
  plot_curve_t c = {"loss", y, 0};
  plot_spec_t spec = {.title = "t",
                      .subtitle = "s",
                      .xlabel = "step",
                      .ylabel = {"loss", NULL},
                      .n = 3,
                      .curves = &c,
                      .n_curves = 1,
                      .band_lo = -1,
                      .band_hi = -1,
                      .mark = -1};
  cr_assert_eq(plot_svg_write(path, &spec, &err), LT_OK, "%s", err.msg);
  check_safe(path);
  /* the resume state, and a log rewritten on resume */
  plant("tune.state", path, sizeof path);
  cr_assert_eq(resume_state_write(path, 7, "/x/checkpoint-7", &err), LT_OK, "%s", err.msg);
  check_safe(path);
  char ckpt[64];
  cr_assert_eq(resume_state_read(path, ckpt, sizeof ckpt), 7);
  /* CURVE keys: a secret one is 0600 */
  plant("client.key", path, sizeof path);
  cr_assert_eq(util_write_z85_key(path, "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7", true, &err), LT_OK, "%s", err.msg);
  check_safe(path);
  struct stat sb;
  cr_assert_eq(stat(path, &sb), 0);
  cr_assert_eq(sb.st_mode & 0777, 0600);
}

Test(outputs, a_log_opened_for_writing_refuses_a_link) {
  char path[300];
  lt_err_t err = {0};
  plant("tune-log.jsonl", path, sizeof path);
  cr_assert_null(resume_log_open(path, 0, &err));
  cr_assert(strstr(err.msg, "tune-log.jsonl") && strstr(err.msg, "symbolic link"), "%s", err.msg);
  cr_assert_null(util_open_nofollow(path, true, &err));
  check_safe(victim);
  /* A real log is appended to after its kept lines are rewritten into a new file. */
  char real[300];
  snprintf(real, sizeof real, "%s/real.jsonl", dir);
  FILE *f = util_open_nofollow(real, false, &err);
  cr_assert(f, "%s", err.msg);
  fputs("{\"step\": 1}\n{\"step\": 2}\n", f);
  fclose(f);
  FILE *log = resume_log_open(real, 1, &err);
  cr_assert(log, "%s", err.msg);
  fputs("{\"step\": 2, \"again\": true}\n", log);
  fclose(log);
  char buf[256] = {0};
  f = fopen(real, "r");
  cr_assert_eq(fread(buf, 1, sizeof buf - 1, f), strlen("{\"step\": 1}\n{\"step\": 2, \"again\": true}\n"));
  fclose(f);
  cr_assert_str_eq(buf, "{\"step\": 1}\n{\"step\": 2, \"again\": true}\n");
}

Test(outputs, a_new_output_gets_the_mode_asked_less_the_umask) {
  char path[300];
  snprintf(path, sizeof path, "%s/out.txt", dir);
  mode_t old = umask(027);
  util_out_t o;
  cr_assert_eq(util_out_open(&o, path, 0644, NULL), LT_OK);
  fputs("x\n", o.f);
  cr_assert_eq(util_out_commit(&o, NULL), LT_OK);
  umask(old);
  struct stat sb;
  cr_assert_eq(stat(path, &sb), 0);
  cr_assert_eq(sb.st_mode & 0777, 0640);
  /* An output given up leaves nothing behind. */
  snprintf(path, sizeof path, "%s/gone.txt", dir);
  cr_assert_eq(util_out_open(&o, path, 0644, NULL), LT_OK);
  util_out_abort(&o);
  cr_assert_neq(access(path, F_OK), 0);
  unlink(victim);
  char cmd[300], out[16] = {0};
  snprintf(cmd, sizeof cmd, "ls -A %s | wc -l", dir);
  FILE *p = popen(cmd, "r");
  cr_assert(p && fgets(out, sizeof out, p));
  pclose(p);
  cr_assert_eq(atoi(out), 1, "only out.txt is left");
}

/* Reads a whole small file into buf (NUL-terminated). */
static void slurp_file(const char *path, char *buf, size_t n) {
  FILE *f = fopen(path, "r");
  cr_assert(f, "no %s", path);
  size_t got = fread(buf, 1, n - 1, f);
  fclose(f);
  buf[got] = '\0';
}

/* Whether the labels v[n] are consecutive multiples of one step that is 1, 2 or 5 times a power of ten. */
static bool round_ticks(const double *v, int n) {
  if (n < 2) return false;
  double st = v[1] - v[0], mag = pow(10, floor(log10(st))), r = st / mag;
  if (fabs(r - 1) > 1e-6 && fabs(r - 2) > 1e-6 && fabs(r - 5) > 1e-6) return false;
  for (int i = 0; i < n; i++) {
    if (fabs(v[i] / st - round(v[i] / st)) > 1e-6) return false;
    if (i && fabs(v[i] - v[i - 1] - st) > st * 1e-6) return false;
  }
  return true;
}

/* Charts label their axes at round numbers (a loss between 1.25 and 3.0 over 1,000 steps: y at 0.5 or 0.2 steps,
 * x at multiples of 100 or 200), draw no dots on long curves, and the bar chart and heat map show every bar, cell
 * and mark. */
Test(outputs, charts_label_round_numbers_and_show_every_bar_and_mark) {
  char path[300];
  lt_err_t err = {0};
  static char doc[1 << 20];
  plant("curve.svg", path, sizeof path);
  static double y[1001];
  for (int i = 0; i <= 1000; i++) y[i] = 2.125 + 0.875 * sin(i / 50.0);
  plot_curve_t c = {"train loss", y, 0};
  plot_spec_t spec = {.title = "t",
                      .subtitle = "s",
                      .xlabel = "step",
                      .ylabel = {"loss", NULL},
                      .n = 1001,
                      .curves = &c,
                      .n_curves = 1,
                      .band_lo = -1,
                      .band_hi = -1,
                      .mark = -1,
                      .fit = true};
  cr_assert_eq(plot_svg_write(path, &spec, &err), LT_OK, "%s", err.msg);
  slurp_file(path, doc, sizeof doc);
  double ys[32], xs[32];
  int ny = 0, nx = 0;
  for (const char *p = doc; (p = strstr(p, "<text x=")); p++) {
    double x, yy, v;
    char anchor[16];
    if (sscanf(p, "<text x=\"%lf\" y=\"%lf\" text-anchor=\"%15[a-z]\">%lf<", &x, &yy, anchor, &v) != 4) continue;
    if (!strcmp(anchor, "end") && ny < 32) ys[ny++] = v;
    if (!strcmp(anchor, "middle") && nx < 32) xs[nx++] = v;
  }
  cr_assert(ny >= 3 && ny <= 12 && round_ticks(ys, ny), "y labels %d from %g to %g", ny, ys[0], ys[ny - 1]);
  cr_assert(nx >= 3 && nx <= 12 && round_ticks(xs, nx) && xs[0] == 0, "x labels %d, %g, %g", nx, xs[0], xs[1]);
  cr_assert(ys[0] <= 1.25 && ys[ny - 1] >= 3.0 && ys[0] > 0, "the y range fits the curve: %g..%g", ys[0], ys[ny - 1]);
  cr_assert_null(strstr(doc, "<circle"), "1,001 points are a line, not dots");

  plant("bars.svg", path, sizeof path);
  static const char *const groups[] = {"all target words", "+joy", "-sad"}, *const series[] = {"unsteered", "steered"};
  double v[6] = {0.4, 0.1, 0.3, 1.7, 1.2, 0.05};
  plot_bars_t b = {.title = "t",
                   .subtitle = "s",
                   .ylabel = "per 100 words",
                   .n_groups = 3,
                   .n_series = 2,
                   .groups = groups,
                   .series = series,
                   .v = v};
  cr_assert_eq(plot_bars_write(path, &b, &err), LT_OK, "%s", err.msg);
  check_safe(path);
  slurp_file(path, doc, sizeof doc);
  int bars = 0;
  for (const char *p = doc; (p = strstr(p, "fill=\"#1f77b4\"/>")); p++) bars++;
  for (const char *p = doc; (p = strstr(p, "fill=\"#d62728\"/>")); p++) bars++;
  cr_assert_eq(bars, 6, "%s", doc);
  cr_assert(strstr(doc, ">+joy<") && strstr(doc, ">steered<") && strstr(doc, ">1.70<"), "%s", doc);

  plant("heat.svg", path, sizeof path);
  double h[32];
  bool marked[32] = {false};
  for (int i = 0; i < 32; i++) h[i] = (i % 8) / 8.0 + 0.01 * (i / 8);
  marked[3] = marked[12] = marked[30] = true;
  plot_heat_t hm = {.title = "t",
                    .subtitle = "s",
                    .xlabel = "expert",
                    .ylabel = "block",
                    .scale_label = "p",
                    .rows = 4,
                    .cols = 8,
                    .v = h,
                    .marked = marked,
                    .marked_label = "dropped expert"};
  cr_assert_eq(plot_heat_write(path, &hm, &err), LT_OK, "%s", err.msg);
  check_safe(path);
  slurp_file(path, doc, sizeof doc);
  int cells = 0, crosses = 0;
  for (const char *p = doc; (p = strstr(p, "stroke=\"#fff\"/>")); p++) cells++;
  for (const char *p = doc; (p = strstr(p, "<path d=\"M")); p++) crosses++;
  cr_assert_eq(cells, 32);
  cr_assert_eq(crosses, 3 + 1, "three marked cells and the legend's mark");
}
