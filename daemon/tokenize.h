/* `lathe tokenize`, run inside lathe-worker (which links the tokenizers). */
#ifndef LATHE_TOKENIZE_H
#define LATHE_TOKENIZE_H

/* Runs `tokenize` with argv as the CLI got it after the command name (argv[0] is a program name): prints each
 * input's ids and pieces; returns the exit status (0 done, 1 a file or input failed, 2 a usage error). */
int tokenize_main(int argc, char **argv);

#endif
