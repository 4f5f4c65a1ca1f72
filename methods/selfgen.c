#include "methods/selfgen.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool sg_ends_sentence(const char *text) {
  size_t n = strlen(text);
  while (n && strchr(" \t\r\n\f\v", text[n - 1])) n--;
  static const char *const quotes[] = {"\"", "'", "\xe2\x80\x9d", "\xe2\x80\x99", "\xc2\xbb"};
  for (size_t q = 0; q < sizeof quotes / sizeof *quotes; q++) {
    size_t k = strlen(quotes[q]);
    if (n > k && !memcmp(text + n - k, quotes[q], k)) {
      n -= k;
      break;
    }
  }
  return n && strchr(".!?", text[n - 1]);
}

size_t sg_pick(size_t input, size_t j, size_t per_input, size_t pool) { return (input * per_input + j) % pool; }

char *sg_message(const char *instruction, const char *input) {
  size_t a = strlen(instruction), b = input ? strlen(input) : 0;
  char *s = malloc(a + b + 3);
  if (!s) return NULL;
  memcpy(s, instruction, a);
  if (b) {
    memcpy(s + a, "\n\n", 2);
    memcpy(s + a + 2, input, b);
    a += 2;
  }
  s[a + b] = '\0';
  return s;
}
