/* Self-generated data: which outputs count as ending a sentence, how instructions are paired with inputs, and
 * what the model is asked. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "methods/selfgen.h"

Test(selfgen, sentence_endings) {
  const char *kept[] = {"Done.",
                        "Really?",
                        "Stop!",
                        "He said \"go.\"",
                        "It is 'so.'",
                        "Fin.  \n",
                        "\xe2\x80\x9cYes.\xe2\x80\x9d",
                        "Non.\xc2\xbb",
                        "a.\xe2\x80\x99"};
  const char *dropped[] = {"", "   ", "and then", "Done,", "Cut mid-word", "\"quoted\"", "Dr", "1.5 and", "ok.)"};
  for (size_t i = 0; i < sizeof kept / sizeof *kept; i++) cr_assert(sg_ends_sentence(kept[i]), "%s", kept[i]);
  for (size_t i = 0; i < sizeof dropped / sizeof *dropped; i++)
    cr_assert_not(sg_ends_sentence(dropped[i]), "%s", dropped[i]);
}

Test(selfgen, pairing_walks_the_pool) {
  /* 3 instructions, 2 per input: inputs take (0,1), (2,0), (1,2), (0,1)... */
  size_t want[4][2] = {{0, 1}, {2, 0}, {1, 2}, {0, 1}};
  for (size_t i = 0; i < 4; i++)
    for (size_t j = 0; j < 2; j++) cr_assert_eq(sg_pick(i, j, 2, 3), want[i][j]);
  /* per_input == pool: every pair. */
  for (size_t i = 0; i < 5; i++)
    for (size_t j = 0; j < 4; j++) cr_assert_eq(sg_pick(i, j, 4, 4), j);
}

Test(selfgen, message) {
  char *m = sg_message("Summarise.", "A long text.");
  cr_assert_str_eq(m, "Summarise.\n\nA long text.");
  free(m);
  m = sg_message("Write a proverb.", "");
  cr_assert_str_eq(m, "Write a proverb.");
  free(m);
}
