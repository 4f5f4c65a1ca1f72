/* The Vulkan runtime under stress: the on-disk shader caches (warm start, corruption, deletion), the staging
 * path, limits and argument errors, chunked submission, the sub-allocator, and a machine without a driver. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/gpu/gpu_internal.h"
#include "engine/ops/ref/ref.h"
#include "support/tgpu.h"

/* No suite-wide fixture: several tests open their own gpu (other cache folders, environment variables set
 * first), and the no-driver test must fork before anything has touched Vulkan. */
TestSuite(runtime);

/* Opens a gpu on cache_dir (NULL: the shared test cache), honouring LATHE_VALIDATION. */
static gpu_t *rt_open(const char *cache_dir) {
  lt_err_t err = {0};
  gpu_opts_t o = {.cache_dir = cache_dir ? cache_dir : getenv("LATHE_TEST_CACHE_DIR")};
  gpu_t *g = gpu_new(&o, &err);
  cr_assert(g != NULL, "gpu_new: %s", err.msg);
  return g;
}

/* Closes a gpu opened by rt_open(), failing the test if the validation layer reported errors. */
static void rt_close(gpu_t **g) {
  uint64_t verr = gpu_stats(*g)->validation_errors;
  gpu_destroy(g);
  cr_assert_eq(verr, 0, "the validation layer reported %llu error(s)", (unsigned long long)verr);
}

static gpu_buf_t *rt_buf(gpu_t *g, const void *src, uint64_t bytes) {
  lt_err_t err = {0};
  gpu_buf_t *b = gpu_buf_new(g, bytes, &err);
  cr_assert(b != NULL, "gpu_buf_new(%llu): %s", (unsigned long long)bytes, err.msg);
  cr_assert_eq(gpu_upload(b, 0, src, bytes, &err), LT_OK, "upload: %s", err.msg);
  return b;
}

/* Runs y = a + b on g with n elements and checks the result is exactly the reference (one f32 add). */
static void check_add(gpu_t *g, uint32_t n) {
  uint64_t seed = 0x51 + n;
  float *a = talloc(n), *b = talloc(n), *want = talloc(n), *got = talloc(n);
  trand(a, n, -8, 8, &seed);
  trand(b, n, -8, 8, &seed);
  ref_add(want, a, b, n, n);
  gpu_buf_t *ba = rt_buf(g, a, 4ull * n), *bb = rt_buf(g, b, 4ull * n), *by = rt_buf(g, want, 4ull * n);
  lt_err_t err = {0};
  cr_assert_eq(gpu_buf_zero(by, 0, 4ull * n, &err), LT_OK, "%s", err.msg);
  gpu_cmd_t *c = gpu_cmd_begin(g, &err);
  cr_assert(c != NULL, "%s", err.msg);
  cr_assert_eq(op_add(c, gv(by), gv(ba), gv(bb), n, n, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(gpu_cmd_finish(&c, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(gpu_download(by, 0, got, 4ull * n, &err), LT_OK, "%s", err.msg);
  tassert_close(got, want, n, 0, 0, "a + b");
  free(a), free(b), free(want), free(got);
  gpu_buf_destroy(&ba), gpu_buf_destroy(&bb), gpu_buf_destroy(&by);
}

/* ---- shader caches ---- */

/* The pipelines the cache tests use: three SPIR-V files (the define only changes the cache key). */
static void get_pipelines(gpu_t *g) {
  lt_err_t err = {0};
  cr_assert(op_pipeline(g, OP_ELTWISE, NULL, NULL, 0, &err) != NULL, "%s", err.msg);
  cr_assert(op_pipeline(g, OP_ELTWISE, "LATHE_RUNTIME_TEST_VARIANT=1", NULL, 0, &err) != NULL, "%s", err.msg);
  cr_assert(op_pipeline(g, OP_PERTURB, NULL, NULL, 0, &err) != NULL, "%s", err.msg);
}

/* Lists the entries of dir not starting with '.' that end in suffix into names[] (at most cap); returns the
 * count. */
static int list_files(const char *dir, const char *suffix, char names[][1200], int cap) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  int n = 0;
  size_t ls = strlen(suffix);
  for (struct dirent *e; (e = readdir(d)) && n < cap;) {
    size_t l = strlen(e->d_name);
    if (e->d_name[0] != '.' && l > ls && strcmp(e->d_name + l - ls, suffix) == 0)
      snprintf(names[n++], 1200, "%s/%s", dir, e->d_name);
  }
  closedir(d);
  return n;
}

static long file_size(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 ? (long)sb.st_size : -1;
}

/* Flips the bits of the byte at pos (negative: from the end). */
static void flip_byte(const char *path, long pos) {
  FILE *f = fopen(path, "r+b");
  cr_assert(f != NULL, "open %s", path);
  cr_assert_eq(fseek(f, pos, pos < 0 ? SEEK_END : SEEK_SET), 0);
  int c = fgetc(f);
  cr_assert(c != EOF);
  cr_assert_eq(fseek(f, -1, SEEK_CUR), 0);
  fputc(c ^ 0xff, f);
  fclose(f);
}

static void remove_tree(const char *dir) {
  char spv[1100], names[16][1200];
  snprintf(spv, sizeof spv, "%s/spirv", dir);
  int n = list_files(spv, "", names, 16);
  for (int i = 0; i < n; i++) unlink(names[i]);
  rmdir(spv);
  n = list_files(dir, "", names, 16);
  for (int i = 0; i < n; i++) unlink(names[i]);
  cr_assert_eq(rmdir(dir), 0, "could not remove %s", dir);
}

Test(runtime, shader_cache_warm_start_corruption_and_deletion) {
  char dir[] = "/tmp/lathe-runtime-XXXXXX", spv[64], names[8][1200];
  cr_assert(mkdtemp(dir) != NULL);
  snprintf(spv, sizeof spv, "%s/spirv", dir);

  /* Cold: everything compiles and is written to the folder. */
  gpu_t *g = rt_open(dir);
  get_pipelines(g);
  cr_assert_eq(gpu_stats(g)->compiles, 3);
  cr_assert_eq(gpu_stats(g)->spirv_cache_hits, 0);
  cr_assert(!gpu_stats(g)->pipeline_cache_loaded && !gpu_stats(g)->pipeline_cache_rejected);
  check_add(g, 1001);
  rt_close(&g);
  cr_assert_eq(list_files(spv, ".spv", names, 8), 3, "one SPIR-V file per variant");

  /* Warm: a start with the same folder compiles nothing. */
  g = rt_open(dir);
  get_pipelines(g);
  cr_assert_eq(gpu_stats(g)->compiles, 0, "a warm start compiles nothing");
  cr_assert_eq(gpu_stats(g)->spirv_cache_hits, 3);
  cr_assert_eq(gpu_stats(g)->spirv_cache_rejects, 0);
  cr_assert(gpu_stats(g)->pipeline_cache_loaded);
  check_add(g, 1001);
  rt_close(&g);

  /* Damage every file: a flipped payload byte (last and middle), a truncation, a garbled pipeline cache. */
  cr_assert_eq(list_files(spv, ".spv", names, 8), 3);
  flip_byte(names[0], -1);
  flip_byte(names[1], file_size(names[1]) / 2);
  cr_assert_eq(truncate(names[2], file_size(names[2]) - 6), 0);
  char plc[1][1200];
  cr_assert_eq(list_files(dir, ".bin", plc, 1), 1, "a pipeline cache file was written");
  long plc_size = file_size(plc[0]);
  for (long pos = 0; pos < plc_size; pos += 7) flip_byte(plc[0], pos);

  /* The next start rejects all of it, recompiles, and computes correctly. */
  g = rt_open(dir);
  cr_assert(gpu_stats(g)->pipeline_cache_rejected && !gpu_stats(g)->pipeline_cache_loaded);
  get_pipelines(g);
  cr_assert_eq(gpu_stats(g)->spirv_cache_rejects, 3);
  cr_assert_eq(gpu_stats(g)->spirv_cache_hits, 0);
  cr_assert_eq(gpu_stats(g)->compiles, 3);
  check_add(g, 1001);
  rt_close(&g);

  /* The rejected files were replaced: warm again. */
  g = rt_open(dir);
  get_pipelines(g);
  cr_assert_eq(gpu_stats(g)->compiles, 0);
  cr_assert(gpu_stats(g)->pipeline_cache_loaded);
  rt_close(&g);

  /* The folder deleted between runs is made again; deleted under a running gpu, saving fails quietly. */
  remove_tree(dir);
  g = rt_open(dir);
  cr_assert(!gpu_stats(g)->pipeline_cache_loaded && !gpu_stats(g)->pipeline_cache_rejected);
  get_pipelines(g);
  cr_assert_eq(gpu_stats(g)->compiles, 3);
  remove_tree(dir);
  lt_err_t err = {0};
  cr_assert(op_pipeline(g, OP_ELTWISE, "LATHE_RUNTIME_TEST_VARIANT=2", NULL, 0, &err) != NULL, "%s", err.msg);
  check_add(g, 1001);
  rt_close(&g);
  struct stat sb;
  cr_assert(stat(dir, &sb) != 0, "nothing recreated the folder after the gpu opened");
}

/* ---- staging ---- */

Test(runtime, forced_staging_moves_data_exactly) {
  cr_assert_eq(setenv("LATHE_FORCE_STAGING", "1", 1), 0);
  gpu_t *g = rt_open(NULL);
  cr_assert(!gpu_caps(g)->unified, "LATHE_FORCE_STAGING=1 must turn the unified path off");
  /* 20 MiB + 13 bytes: several passes through the 8 MiB staging buffer, with a ragged end. */
  const uint64_t bytes = (20ull << 20) + 13;
  unsigned char *src = malloc(bytes), *got = malloc(bytes);
  cr_assert(src && got);
  uint64_t s = 0x9e3779b97f4a7c15ull;
  for (uint64_t i = 0; i < bytes; i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    src[i] = (unsigned char)(s >> 32);
  }
  lt_err_t err = {0};
  uint64_t submits = gpu_stats(g)->submits;
  gpu_buf_t *b = rt_buf(g, src, bytes);
  cr_assert(gpu_stats(g)->submits - submits >= 3, "the upload did not go through the staging buffer in chunks");
  cr_assert_eq(gpu_download(b, 0, got, bytes, &err), LT_OK, "%s", err.msg);
  cr_assert(memcmp(got, src, bytes) == 0, "whole-buffer round trip differs");

  /* Unaligned sub-ranges across chunk boundaries, and a zero fill. */
  const uint64_t off = 5, n = (9ull << 20) + 7;
  cr_assert_eq(gpu_upload(b, off, src + 1000, n, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(gpu_buf_zero(b, 16ull << 20, 1ull << 20, &err), LT_OK, "%s", err.msg);
  memmove(src + off, src + 1000, n);
  memset(src + (16ull << 20), 0, 1ull << 20);
  memset(got, 0, bytes);
  cr_assert_eq(gpu_download(b, 3, got + 3, bytes - 3, &err), LT_OK, "%s", err.msg);
  cr_assert(memcmp(got + 3, src + 3, bytes - 3) == 0, "sub-range upload, fill or offset download differs");
  gpu_buf_destroy(&b);

  /* Ops read and write device memory filled through staging. */
  check_add(g, (12u << 20) / 4 + 3);
  free(src), free(got);
  rt_close(&g);
}

/* ---- limits and errors ---- */

Test(runtime, buffer_limits_and_out_of_range_transfers, .init = tgpu_setup, .fini = tgpu_teardown) {
  gpu_t *g = tgpu();
  lt_err_t err = {0};
  uint64_t max = gpu_caps(g)->max_storage_range;
  cr_assert_null(gpu_buf_new(g, max + 1, &err));
  cr_assert_eq(err.code, LT_E_LIMIT);
  cr_assert(strstr(err.msg, "maxStorageBufferRange") != NULL, "message: %s", err.msg);
  lt_err_clear(&err);
  cr_assert_null(gpu_buf_new(g, 0, &err));
  cr_assert_eq(err.code, LT_E_INVALID);
  cr_assert(err.msg[0] != '\0');

  gpu_buf_t *b = tbuf_bytes(NULL, 100);
  char data[16] = {0}, out[16];
  cr_assert_eq(gpu_upload(b, 98, data, 4, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "100-byte") != NULL, "message names the buffer size: %s", err.msg);
  cr_assert_eq(gpu_upload(b, 101, data, 0, &err), LT_E_INVALID);
  cr_assert_eq(gpu_upload(b, 4, data, UINT64_MAX, &err), LT_E_INVALID, "offset + size must not wrap");
  cr_assert_eq(gpu_download(b, UINT64_MAX, out, 1, &err), LT_E_INVALID);
  cr_assert_eq(gpu_buf_zero(b, 96, 8, &err), LT_E_INVALID);
  cr_assert_eq(gpu_upload(b, 100, data, 0, &err), LT_OK, "an empty transfer at the end is fine");
  cr_assert_eq(gpu_upload(b, 84, data, 16, &err), LT_OK, "%s", err.msg);
  gpu_buf_destroy(&b);
}

Test(runtime, bad_dispatches_are_rejected_and_the_recorder_survives, .init = tgpu_setup, .fini = tgpu_teardown) {
  gpu_t *g = tgpu();
  const uint32_t n = 301;
  uint64_t align = gpu_caps(g)->min_storage_align;
  float *a = talloc(n + 64), *want = talloc(n);
  uint64_t seed = 1;
  trand(a, n + 64, -1, 1, &seed);
  ref_add(want, a, a, n, n);
  gpu_buf_t *x = tbuf_f32(a, n + 64), *y = tbuf_f32(NULL, n);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  if (align > 1) {
    uint64_t off = align / 2;
    cr_assert_eq(op_add(c, gv(y), (gpu_view_t){x, off}, gv(x), n, n, &err), LT_E_INVALID, "misaligned offset");
    cr_assert(strstr(err.msg, "minStorageBufferOffsetAlignment") != NULL, "message: %s", err.msg);
  }
  cr_assert_eq(op_add(c, gv(y), gv(x), gv(x), n + 1, n, &err), LT_E_INVALID, "y is one element short");

  gpu_pipeline_t *p = op_pipeline(g, OP_ELTWISE, NULL, NULL, 0, &err);
  cr_assert(p != NULL, "%s", err.msg);
  pc_eltwise_t pc = {.n = n, .nb = n, .op = ELT_ADD};
  gpu_bind_t ok[3] = {
      {y, 0, 4 * n, true, GPU_TEXEL_NONE}, {x, 0, 4 * n, false, GPU_TEXEL_NONE}, {x, 0, 4 * n, false, GPU_TEXEL_NONE}};
  gpu_bind_t bad[3];
  memcpy(bad, ok, sizeof ok);
  bad[1].range = gpu_buf_size(x) + 4;
  cr_assert_eq(gpu_cmd_dispatch(c, p, bad, 3, &pc, sizeof pc, 2, 1, 1, &err), LT_E_INVALID, "range too long");
  memcpy(bad, ok, sizeof ok);
  bad[0].off = gpu_buf_size(y);
  bad[0].range = 0;
  cr_assert_eq(gpu_cmd_dispatch(c, p, bad, 3, &pc, sizeof pc, 2, 1, 1, &err), LT_E_INVALID, "offset at the end");
  cr_assert_eq(gpu_cmd_dispatch(c, p, ok, 2, &pc, sizeof pc, 2, 1, 1, &err), LT_E_INVALID, "binding count");
  cr_assert_eq(gpu_cmd_dispatch(c, p, ok, 3, &pc, 4, 2, 1, 1, &err), LT_E_INVALID, "push-constant size");
  uint32_t too_many = gpu_caps(g)->max_wg_count[0];
  if (too_many < UINT32_MAX)
    cr_assert_eq(gpu_cmd_dispatch(c, p, ok, 3, &pc, sizeof pc, too_many + 1, 1, 1, &err), LT_E_LIMIT);

  /* Nothing was recorded by the failures; a good dispatch on the same recorder still works. */
  cr_assert_eq(gpu_cmd_dispatch(c, p, ok, 3, &pc, sizeof pc, 2, 1, 1, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *got = tread_f32(y, n);
  tassert_close(got, want, n, 0, 0, "after rejected dispatches");
  free(a), free(want), free(got);
  gpu_buf_destroy(&x), gpu_buf_destroy(&y);
}

Test(runtime, texel_bindings_are_checked_before_recording, .init = tgpu_setup, .fini = tgpu_teardown) {
  /* A binding read through a texel view must be declared so by the pipeline, cover whole texels and start on the
   * device's texel alignment; each mistake is named and records nothing, and a good texel dispatch (GEMV with its
   * weights as RGBA32F texels) then gives the storage-buffer result. */
  gpu_t *g = tgpu();
  const gpu_caps_t *caps = gpu_caps(g);
  if (!gpu_texel_readable(caps, GPU_TEXEL_RGBA32F)) {
    cr_log_info("%s reads no RGBA32F uniform texel buffers", caps->name);
    return;
  }
  const uint32_t N = 4, K = 8;
  float w[32], x[8], want[4] = {0};
  for (uint32_t i = 0; i < N * K; i++) w[i] = (float)(i % 5) - 2.0f;
  for (uint32_t k = 0; k < K; k++) x[k] = (float)k * 0.5f;
  for (uint32_t n = 0; n < N; n++)
    for (uint32_t k = 0; k < K; k++) want[n] += x[k] * w[n * K + k];
  gpu_buf_t *bw = tbuf_f32(w, N * K), *bx = tbuf_f32(x, K), *by = tbuf_f32(NULL, N);
  lt_err_t err = {0};
  uint32_t spec[3] = {1, 4, 1};
  gpu_pipeline_t *p =
      op_pipeline_texel(g, OP_GEMV, "W_F16=0;W_BF16=0;KV=4;STAGED=0;W_TEXEL=1;X_TEXEL=0", spec, 3, 1u << 2, &err);
  cr_assert(p != NULL, "%s", err.msg);
  pc_matmul_t pc = {.M = 1, .N = N, .K = K, .k_base = 0, .k_len = K, .x_stride = K, .w_stride = K, .y_stride = N};
  gpu_bind_t ok[3] = {{by, 0, 4 * N, true, GPU_TEXEL_NONE},
                      {bx, 0, 4 * K, false, GPU_TEXEL_NONE},
                      {bw, 0, 4 * N * K, false, GPU_TEXEL_RGBA32F}};
  gpu_bind_t bad[3];
  gpu_cmd_t *c = tbegin();
  memcpy(bad, ok, sizeof ok);
  bad[2].texel = GPU_TEXEL_NONE;
  cr_assert_eq(gpu_cmd_dispatch(c, p, bad, 3, &pc, sizeof pc, 1, 1, 1, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "declares a texel buffer") != NULL, "%s", err.msg);
  memcpy(bad, ok, sizeof ok);
  bad[2].range = 4 * N * K - 4;
  cr_assert_eq(gpu_cmd_dispatch(c, p, bad, 3, &pc, sizeof pc, 1, 1, 1, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "whole 16-byte texels") != NULL, "%s", err.msg);
  if (caps->min_texel_align > 4) {
    memcpy(bad, ok, sizeof ok);
    bad[2].off = 4, bad[2].range = 4 * N * K - 16;
    cr_assert_eq(gpu_cmd_dispatch(c, p, bad, 3, &pc, sizeof pc, 1, 1, 1, &err), LT_E_INVALID);
    cr_assert(strstr(err.msg, "aligned") != NULL, "%s", err.msg);
  }
  memcpy(bad, ok, sizeof ok);
  bad[1].texel = GPU_TEXEL_RGBA32F;
  cr_assert_eq(gpu_cmd_dispatch(c, p, bad, 3, &pc, sizeof pc, 1, 1, 1, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "declares a storage buffer") != NULL, "%s", err.msg);
  cr_assert_eq(gpu_cmd_dispatch(c, p, ok, 3, &pc, sizeof pc, 1, 1, 1, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *got = tread_f32(by, N);
  tassert_close(got, want, N, 1e-6, 0, "GEMV through a texel view");
  free(got);
  gpu_buf_destroy(&bw), gpu_buf_destroy(&bx), gpu_buf_destroy(&by);
}

Test(runtime, unknown_device_lists_the_devices) {
  char list[4096] = "";
  FILE *f = fmemopen(list, sizeof list - 1, "w");
  cr_assert(f != NULL);
  lt_err_t err = {0};
  int n = gpu_list_devices(f, &err);
  fclose(f);
  cr_assert(n > 0, "gpu_list_devices: %s", err.msg);
  cr_assert_eq(setenv("LATHE_DEVICE", "99", 1), 0);
  gpu_opts_t o = {.no_disk_cache = true};
  cr_assert_null(gpu_new(&o, &err));
  cr_assert_eq(err.code, LT_E_INVALID);
  cr_assert(strstr(err.msg, "LATHE_DEVICE=99") != NULL, "message: %s", err.msg);
  /* Every device's name appears in the message (lines are "index\tkind\tname\tuuid"). */
  for (char *line = strtok(list, "\n"); line; line = strtok(NULL, "\n")) {
    char *name = strchr(strchr(line, '\t') + 1, '\t') + 1;
    *strchr(name, '\t') = '\0';
    cr_assert(strstr(err.msg, name) != NULL, "device %s missing from: %s", name, err.msg);
  }
  /* Index 0 and the first device's UUID both select it. */
  cr_assert_eq(setenv("LATHE_DEVICE", "0", 1), 0);
  gpu_t *g = gpu_new(&o, &err);
  cr_assert(g != NULL, "LATHE_DEVICE=0: %s", err.msg);
  char uuid[40];
  const uint8_t *u = gpu_caps(g)->device_uuid;
  snprintf(uuid, sizeof uuid, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2],
           u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
  rt_close(&g);
  o.device = uuid;
  g = gpu_new(&o, &err);
  cr_assert(g != NULL, "device %s: %s", uuid, err.msg);
  rt_close(&g);
}

/* ---- chunked submission ---- */

/* Records `steps` dependent y += b dispatches, switching the chunk size to chunk2 after the first two (inside
 * the first command buffer: chunk > 2). */
static void chained_adds(uint32_t chunk, uint32_t chunk2, uint32_t steps) {
  gpu_t *g = tgpu();
  const uint32_t n = 777;
  float *a = talloc(n), *b = talloc(n), *want = talloc(n);
  for (uint32_t i = 0; i < n; i++) a[i] = (float)((int)(i % 41) - 20), b[i] = (float)((int)(i % 7) - 3);
  for (uint32_t i = 0; i < n; i++) want[i] = a[i] + (float)steps * b[i]; /* small integers: exact */
  gpu_buf_t *by = tbuf_f32(a, n), *bb = tbuf_f32(b, n);
  lt_err_t err = {0};
  gpu_set_chunk(g, chunk);
  uint64_t submits = gpu_stats(g)->submits, barriers = gpu_stats(g)->barriers;
  gpu_cmd_t *c = tbegin();
  for (uint32_t k = 0; k < steps; k++) {
    if (k == 2) gpu_set_chunk(g, chunk2);
    cr_assert_eq(op_add(c, gv(by), gv(by), gv(bb), n, n, &err), LT_OK, "step %u: %s", k, err.msg);
  }
  tfinish(&c);
  uint64_t submitted = gpu_stats(g)->submits - submits, barred = gpu_stats(g)->barriers - barriers;
  float *got = tread_f32(by, n);
  tassert_close(got, want, n, 0, 0, "chained adds across submissions");
  /* Every step reads what the previous one wrote: one barrier each, including across command buffers. */
  cr_assert_eq(barred, steps - 1, "barriers %llu", (unsigned long long)barred);
  /* A command buffer holds at most the chunk size in force when it was begun (its descriptor pool's size). */
  uint64_t want_submits = 1 + (steps - chunk + chunk2 - 1) / chunk2;
  cr_assert_eq(submitted, want_submits, "submits %llu", (unsigned long long)submitted);
  free(a), free(b), free(want), free(got);
  gpu_buf_destroy(&by), gpu_buf_destroy(&bb);
}

Test(runtime, chunked_submission_keeps_dependencies, .init = tgpu_setup, .fini = tgpu_teardown) {
  chained_adds(3, 3, 20);
}

Test(runtime, chunk_size_changed_while_recording, .init = tgpu_setup, .fini = tgpu_teardown) {
  /* The first command buffer's descriptor pool was sized for 3 dispatches; raising the chunk size mid-recording
   * must not overrun it. */
  chained_adds(3, 50, 20);
}

Test(runtime, abort_after_partial_submission, .init = tgpu_setup, .fini = tgpu_teardown) {
  gpu_t *g = tgpu();
  gpu_buf_t *y = tbuf_f32(NULL, 100);
  lt_err_t err = {0};
  gpu_set_chunk(g, 2);
  gpu_cmd_t *c = tbegin();
  for (int k = 0; k < 5; k++) cr_assert_eq(op_add(c, gv(y), gv(y), gv(y), 100, 100, &err), LT_OK, "%s", err.msg);
  gpu_cmd_abort(&c);
  cr_assert_null(c);
  gpu_cmd_abort(&c);
  check_add(g, 100);
  gpu_buf_destroy(&y);
}

/* ---- sub-allocator ---- */

/* Checks every block's free list: sorted, inside the block, not touching (coalesced), and at most one more range
 * than live buffers (free ranges are separated by live buffers when neighbours merge). Reads the private block
 * list (engine/gpu/gpu_internal.h): the allocator's layout is not visible through the public API. */
static void check_free_lists(gpu_t *g) {
  for (gpu_block_t *blk = g->blocks; blk; blk = blk->next) {
    for (uint32_t i = 0; i < blk->n_free; i++) {
      const gpu_range_t *r = &blk->free[i];
      cr_assert(r->size > 0 && r->off + r->size <= blk->size, "free range %u outside its block", i);
      if (i)
        cr_assert(blk->free[i - 1].off + blk->free[i - 1].size < r->off, "free ranges %u, %u not merged", i - 1, i);
    }
    cr_assert(blk->n_free <= blk->live + 1, "%u free ranges around %u live buffers", blk->n_free, blk->live);
  }
}

typedef struct live {
  gpu_buf_t *b;
  uint32_t words, tag;
} live_t;

static void fill_pattern(uint32_t *p, uint32_t words, uint32_t tag) {
  for (uint32_t i = 0; i < words; i++) p[i] = tag * 0x9e3779b1u ^ i;
}

static void check_live(const live_t *lv, uint32_t n_live) {
  for (uint32_t k = 0; k < n_live; k++) {
    uint32_t *got = tread_bytes(lv[k].b, 4ull * lv[k].words), *want = malloc(4ull * lv[k].words);
    cr_assert(want != NULL);
    fill_pattern(want, lv[k].words, lv[k].tag);
    cr_assert(memcmp(got, want, 4ull * lv[k].words) == 0, "buffer tag %u (%u words) was overwritten", lv[k].tag,
              lv[k].words);
    free(got), free(want);
  }
}

Test(runtime, suballocator_random_order_keeps_data_and_coalesces, .init = tgpu_setup, .fini = tgpu_teardown) {
  gpu_t *g = tgpu();
  uint64_t base = gpu_stats(g)->bytes_allocated, s = 12345;
  enum { MAX_LIVE = 96 };
  live_t lv[MAX_LIVE];
  uint32_t n_live = 0, tag = 0;
  /* Rounds of random sizes (4 B .. 1.5 MiB, odd word counts) allocated and freed in random order, so blocks
   * fill, fragment and merge; every live buffer's contents are checked after each round. */
  for (int round = 0; round < 8; round++) {
    while (n_live < MAX_LIVE) {
      s ^= s << 13, s ^= s >> 7, s ^= s << 17;
      uint32_t words = (s >> 11) % 4 == 0 ? (uint32_t)(s >> 20) % 393216 + 1 : (uint32_t)(s >> 20) % 3000 + 1;
      uint32_t *p = malloc(4ull * words);
      cr_assert(p != NULL);
      fill_pattern(p, words, ++tag);
      lv[n_live++] = (live_t){tbuf_bytes(p, 4ull * words), words, tag};
      free(p);
    }
    check_live(lv, n_live);
    check_free_lists(g);
    for (uint32_t k = 0; k < MAX_LIVE * 2 / 3; k++) {
      s ^= s << 13, s ^= s >> 7, s ^= s << 17;
      uint32_t j = (uint32_t)(s >> 33) % n_live;
      gpu_buf_destroy(&lv[j].b);
      lv[j] = lv[--n_live];
    }
    check_free_lists(g);
  }
  check_live(lv, n_live);
  /* Free all but one in random order: its block must be back to at most two free ranges around it. */
  while (n_live > 1) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    uint32_t j = (uint32_t)(s >> 33) % (n_live - 1) + 1;
    gpu_buf_destroy(&lv[j].b);
    lv[j] = lv[--n_live];
    check_free_lists(g);
  }
  check_live(lv, 1);
  gpu_block_t *anchor = lv[0].b->blk;
  cr_assert(anchor->n_free <= 2, "%u free ranges around the one buffer left", anchor->n_free);
  for (gpu_block_t *blk = g->blocks; blk; blk = blk->next) cr_assert(blk->live > 0, "an empty block was kept");
  uintptr_t anchor_id = (uintptr_t)anchor;
  gpu_buf_destroy(&lv[0].b);
  for (gpu_block_t *blk = g->blocks; blk; blk = blk->next)
    cr_assert((uintptr_t)blk != anchor_id, "the last buffer's block was not freed");
  cr_assert_eq(gpu_stats(g)->bytes_allocated, base);
}

/* ---- no driver ---- */

Test(runtime, no_driver_names_the_package) {
  /* In a child, before any Vulkan call, point the loader at a driver manifest that does not exist. */
  int fds[2];
  cr_assert_eq(pipe(fds), 0);
  pid_t pid = fork();
  cr_assert(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    setenv("VK_ICD_FILENAMES", "/nonexistent/lathe-no-driver.json", 1);
    setenv("VK_DRIVER_FILES", "/nonexistent/lathe-no-driver.json", 1);
    struct {
      int got_gpu, code, list_code;
      char msg[512];
    } r = {0};
    lt_err_t err = {0}, lerr = {0};
    gpu_opts_t o = {.no_disk_cache = true};
    gpu_t *g = gpu_new(&o, &err);
    r.got_gpu = g != NULL;
    r.code = err.code;
    memcpy(r.msg, err.msg, sizeof r.msg);
    FILE *null = fopen("/dev/null", "w");
    r.list_code = gpu_list_devices(null, &lerr);
    gpu_destroy(&g);
    _exit(write(fds[1], &r, sizeof r) == (ssize_t)sizeof r ? 0 : 1);
  }
  close(fds[1]);
  struct {
    int got_gpu, code, list_code;
    char msg[512];
  } r = {0};
  ssize_t got = read(fds[0], &r, sizeof r);
  close(fds[0]);
  int status = 0;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0 && got == (ssize_t)sizeof r, "the child failed");
  cr_assert(!r.got_gpu, "gpu_new succeeded without a driver");
  cr_assert_eq(r.code, LT_E_NO_VULKAN, "code %d (%s): %s", r.code, lt_status_str(r.code), r.msg);
  cr_assert(strstr(r.msg, "mesa-vulkan-drivers") != NULL, "message does not name the package: %s", r.msg);
  cr_assert_eq(r.list_code, LT_E_NO_VULKAN, "gpu_list_devices without a driver returned %d", r.list_code);
}
