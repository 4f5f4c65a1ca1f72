/* Chat templates: the Jinja subset that the chat_template of common models uses (LLaMA 2 [INST], Mistral,
 * Llama 3 headers, ChatML, Zephyr, Gemma), rendered as Hugging Face's apply_chat_template does (Jinja with
 * trim_blocks and lstrip_blocks, one trailing newline of the template dropped), and a plain template for models
 * without one. The subset and the plain template are written down in docs/data-jobs.md.
 *
 * Supported: text, {{ }}, {% %}, {# #}, whitespace control {%- -%} (and {%+ to keep lstrip off); if/elif/else,
 * for (with else, an `if` filter, unpacking `a, b`, the loop variable: index, index0, revindex, revindex0, first,
 * last, length), set (names, namespace attributes, block set), generation blocks; literals (strings with Python
 * escapes, integers, true/false/none, lists, dicts), attribute and item access, slices, calls, filters, tests
 * (`is defined`, `is not none`...), not/and/or, == != < <= > >=, in / not in, + - * // %, ~, `x if c else y`;
 * the functions raise_exception, namespace, range; string methods strip/lstrip/rstrip/startswith/endswith/
 * upper/lower/title/capitalize/split/replace, dict methods get/items/keys/values; filters trim, length/count,
 * lower, upper, capitalize, title, default/d, first, last, string, join, list, replace, tojson. Anything else is
 * refused at parse or render time with the line it is on. Case changes are ASCII only. */
#ifndef LATHE_CHAT_H
#define LATHE_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include "common/status.h"
#include "engine/text/tokenizer.h"

/* One message of a conversation: role ("system", "user", "assistant") and content. */
typedef struct chat_msg {
  const char *role;
  const char *content;
} chat_msg_t;

typedef struct chat_tmpl chat_tmpl_t;

/* The plain template, for models without a chat template:
 *   {% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] | trim }}\n\n
 *   {% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}
 * i.e. "User: Hi\n\nAssistant:". */
extern const char *const CHAT_PLAIN_TEMPLATE;

/* What opens the next turn in the plain template ("\nUser:", "\nAssistant:", "\nSystem:", NULL): a reply
 * generated after it is cut there (lm_t.stops). */
extern const char *const CHAT_PLAIN_STOPS[];

/* Parses a Jinja chat template; bos_token and eos_token are the values of those variables (NULL: ""). Caller
 * owns (chat_tmpl_destroy). NULL with err: LT_E_INVALID for a syntax error, LT_E_UNSUPPORTED for a construct
 * outside the subset, both naming the line. */
chat_tmpl_t *chat_tmpl_new(const char *source, const char *bos_token, const char *eos_token, lt_err_t *err);

/* The plain template (CHAT_PLAIN_TEMPLATE, marked plain for chat_tmpl_is_plain and chat_encode_flags). Caller
 * owns; NULL with err when out of memory. */
chat_tmpl_t *chat_tmpl_plain(lt_err_t *err);

/* Frees the template and sets *t to NULL; NULL-safe. */
void chat_tmpl_destroy(chat_tmpl_t **t);

/* Whether t is the plain template. */
bool chat_tmpl_is_plain(const chat_tmpl_t *t);

/* Renders the conversation msgs[n] (add_generation_prompt: end with the opening of an assistant turn). On
 * success *out is a new NUL-terminated string of *len bytes (caller frees). Fails with err naming the line
 * (LT_E_INVALID for raise_exception() and type errors, LT_E_LIMIT past 16 MiB of output or 64 MiB of
 * working memory). */
lt_status_t chat_render(const chat_tmpl_t *t, const chat_msg_t *msgs, size_t n, bool add_generation_prompt, char **out,
                        size_t *len, lt_err_t *err);

/* How text rendered by t is tokenized: a model's template writes its own special tokens (BOS included), so
 * TOK_PARSE_SPECIAL and no BOS is added, as Hugging Face does; the plain template writes none, so TOK_ADD_BOS
 * when tok has a BOS token. */
unsigned chat_encode_flags(const chat_tmpl_t *t, const tok_t *tok);

#endif
