/* A fuzz target's driver without libFuzzer (any compiler, run by `make check` under ASan): every file of the corpus
 * folders as it is, then LATHE_FUZZ_RUNS (default 3000) inputs mutated from them: bits flipped, bytes set to edge
 * values, cut short, a chunk repeated, bytes inserted. The mutations follow LATHE_FUZZ_SEED (default 1), so a
 * failing run repeats; the input that failed is written to fuzz-crash.bin before the target runs it.
 * Usage: fuzz_replay_* [--keep-first-byte] CORPUS_DIR... (--keep-first-byte: never mutate byte 0, the selector
 * of a target that serves several parsers). */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct input {
  uint8_t *data;
  size_t size;
} input_t;

static uint64_t rng_state;

static uint64_t rnd(void) {
  rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
  return rng_state;
}

/* Writes the input about to run, so that a crash leaves it behind. */
static void keep(const uint8_t *d, size_t n) {
  FILE *f = fopen("fuzz-crash.bin", "wb");
  if (!f) return;
  fwrite(d, 1, n, f);
  fclose(f);
}

static void run(const uint8_t *d, size_t n) {
  keep(d, n);
  /* A copy of exactly n bytes: ASan sees a read past the end. */
  uint8_t *c = malloc(n ? n : 1);
  if (!c) return;
  memcpy(c, d, n);
  LLVMFuzzerTestOneInput(c, n);
  free(c);
}

/* One mutation of in into out (a buffer of cap bytes); returns the new size. */
static size_t mutate(const input_t *in, uint8_t *out, size_t cap, size_t from) {
  size_t n = in->size < cap ? in->size : cap;
  memcpy(out, in->data, n);
  int steps = 1 + (int)(rnd() % 4);
  for (int s = 0; s < steps && n > from; s++) {
    size_t at = from + rnd() % (n - from);
    switch (rnd() % 6) {
    case 0: out[at] ^= (uint8_t)(1u << (rnd() % 8)); break;
    case 1: {
      static const uint8_t edge[] = {0x00, 0xff, 0x7f, 0x80, 0x01, '"', '{', '}', '\\', '\n'};
      out[at] = edge[rnd() % sizeof edge];
      break;
    }
    case 2: n = at; break; /* cut short */
    case 3:                /* an edge value written as 8 bytes (sizes, counts, offsets) */
      if (n - at >= 8) {
        uint64_t v = rnd() % 2 ? UINT64_MAX >> (rnd() % 64) : rnd() % 4096;
        memcpy(out + at, &v, 8);
      }
      break;
    case 4: { /* a chunk repeated */
      size_t len = 1 + rnd() % 64;
      if (at + len <= n && n + len <= cap) {
        memmove(out + at + len, out + at, n - at);
        n += len;
      }
      break;
    }
    default: /* a random byte inserted */
      if (n < cap) {
        memmove(out + at + 1, out + at, n - at);
        out[at] = (uint8_t)rnd();
        n++;
      }
    }
  }
  return n;
}

int main(int argc, char **argv) {
  input_t *ins = NULL;
  size_t n_in = 0, largest = 0, from = 0;
  for (int a = 1; a < argc; a++) {
    if (!strcmp(argv[a], "--keep-first-byte")) {
      from = 1;
      continue;
    }
    DIR *d = opendir(argv[a]);
    if (!d) {
      fprintf(stderr, "fuzz replay: cannot open %s\n", argv[a]);
      return 2;
    }
    for (struct dirent *de; (de = readdir(d));) {
      if (de->d_name[0] == '.') continue;
      char path[4096];
      snprintf(path, sizeof path, "%s/%s", argv[a], de->d_name);
      FILE *f = fopen(path, "rb");
      if (!f) continue;
      input_t in = {0};
      fseek(f, 0, SEEK_END);
      long len = ftell(f);
      fseek(f, 0, SEEK_SET);
      if (len >= 0 && (in.data = malloc((size_t)len + 1)) && fread(in.data, 1, (size_t)len, f) == (size_t)len) {
        in.size = (size_t)len;
        input_t *grown = realloc(ins, (n_in + 1) * sizeof *ins);
        if (grown) ins = grown, ins[n_in++] = in, largest = in.size > largest ? in.size : largest;
      }
      fclose(f);
    }
    closedir(d);
  }
  if (!n_in) {
    fprintf(stderr, "fuzz replay: no corpus files\n");
    return 2;
  }
  const char *r = getenv("LATHE_FUZZ_RUNS"), *s = getenv("LATHE_FUZZ_SEED");
  long runs = r ? atol(r) : 3000;
  rng_state = s ? strtoull(s, NULL, 10) * 2654435761u + 1 : 88172645463325252ull;
  for (size_t i = 0; i < n_in; i++) run(ins[i].data, ins[i].size);
  size_t cap = largest + 4096;
  uint8_t *buf = malloc(cap);
  for (long k = 0; buf && k < runs; k++) {
    const input_t *in = &ins[rnd() % n_in];
    run(buf, mutate(in, buf, cap, from));
  }
  printf("fuzz replay: %zu corpus files and %ld mutated inputs, no failure\n", n_in, runs);
  remove("fuzz-crash.bin");
  for (size_t i = 0; i < n_in; i++) free(ins[i].data);
  free(ins), free(buf);
  return 0;
}
