/* Chat templates: the published templates of common model families (tests/fixtures/chat/<family>/
 * tokenizer_config.json) render exactly the reference strings of tests/fixtures/chat/cases.json, which were
 * derived by hand from the templates; the Jinja features and whitespace rules they rely on behave as Jinja's
 * do with Hugging Face's settings; errors name their line. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/model_tok.h"
#include "engine/text/chat.h"
#include "engine/text/tokenizer.h"

#define CHAT_FIXTURES LATHE_SOURCE_DIR "/tests/fixtures/chat"

TestSuite(chat, .timeout = 30);

/* Renders src with messages given as role, content pairs (NULL-terminated); asserts success. Caller frees. */
static char *render(const char *src, bool gen, const char *const *pairs) {
  lt_err_t err = {0};
  chat_tmpl_t *t = chat_tmpl_new(src, "<s>", "</s>", &err);
  cr_assert_not_null(t, "parse: %s", err.msg);
  chat_msg_t m[8];
  size_t n = 0;
  for (; pairs && pairs[2 * n]; n++) m[n] = (chat_msg_t){pairs[2 * n], pairs[2 * n + 1]};
  char *out = NULL;
  size_t len = 0;
  cr_assert_eq(chat_render(t, m, n, gen, &out, &len, &err), LT_OK, "render: %s", err.msg);
  cr_assert_eq(len, strlen(out));
  chat_tmpl_destroy(&t);
  return out;
}

static void expect(const char *src, const char *want) {
  char *got = render(src, false, NULL);
  cr_assert_str_eq(got, want, "template %s", src);
  free(got);
}

Test(chat, model_family_templates_render_the_reference_strings) {
  json_error_t je;
  json_t *cases = json_load_file(CHAT_FIXTURES "/cases.json", 0, &je);
  cr_assert_not_null(cases, "%s", je.text);
  size_t i, checked = 0;
  json_t *c;
  json_array_foreach(cases, i, c) {
    const char *name = json_string_value(json_object_get(c, "template"));
    char dir[512];
    snprintf(dir, sizeof dir, CHAT_FIXTURES "/%s", name);
    lt_err_t err = {0};
    chat_tmpl_t *t = model_chat_template_open(dir, &err);
    cr_assert_not_null(t, "%s: %s", name, err.msg);
    cr_assert_not(chat_tmpl_is_plain(t), "%s has a chat_template", name);
    const json_t *msgs = json_object_get(c, "messages");
    chat_msg_t m[8];
    size_t n = json_array_size(msgs);
    cr_assert_leq(n, 8);
    for (size_t k = 0; k < n; k++)
      m[k] = (chat_msg_t){json_string_value(json_array_get(json_array_get(msgs, k), 0)),
                          json_string_value(json_array_get(json_array_get(msgs, k), 1))};
    char *out = NULL;
    size_t len = 0;
    lt_status_t st = chat_render(t, m, n, json_is_true(json_object_get(c, "add_generation_prompt")), &out, &len, &err);
    const char *want = json_string_value(json_object_get(c, "expect"));
    const char *error = json_string_value(json_object_get(c, "error"));
    if (want) {
      cr_assert_eq(st, LT_OK, "case %zu (%s): %s", i, name, err.msg);
      cr_assert_str_eq(out, want, "case %zu (%s)", i, name);
    } else {
      cr_assert_eq(st, LT_E_INVALID, "case %zu (%s) must fail", i, name);
      cr_assert(strstr(err.msg, error), "case %zu (%s): %s", i, name, err.msg);
    }
    free(out);
    chat_tmpl_destroy(&t);
    checked++;
  }
  cr_assert_eq(checked, 14);
  json_decref(cases);
}

Test(chat, plain_template_for_models_without_one) {
  static const char *const conv[] = {"system", "Be kind.", "user", " Hi ", NULL};
  char *out = render(CHAT_PLAIN_TEMPLATE, true, conv);
  cr_assert_str_eq(out, "System: Be kind.\n\nUser: Hi\n\nAssistant:");
  free(out);
  lt_err_t err = {0};
  /* A folder whose tokenizer_config.json has no chat_template, and a GGUF file without one. */
  chat_tmpl_t *t = model_chat_template_open(LATHE_SOURCE_DIR "/tests/fixtures/llama-tiny", &err);
  cr_assert_not_null(t, "%s", err.msg);
  cr_assert(chat_tmpl_is_plain(t));
  tok_t *tok = tok_new_json(LATHE_SOURCE_DIR "/tests/fixtures/llama-tiny/tokenizer.json", &err);
  cr_assert_not_null(tok, "%s", err.msg);
  cr_assert_eq(chat_encode_flags(t, tok), TOK_ADD_BOS, "plain text has no BOS of its own");
  chat_tmpl_destroy(&t);
  t = model_chat_template_open(LATHE_SOURCE_DIR "/tests/fixtures/stories260K/stories260K.gguf", &err);
  cr_assert_not_null(t, "%s", err.msg);
  cr_assert(chat_tmpl_is_plain(t));
  chat_tmpl_destroy(&t);
  t = model_chat_template_open(CHAT_FIXTURES "/llama3", &err);
  cr_assert_not_null(t, "%s", err.msg);
  cr_assert_eq(chat_encode_flags(t, tok), TOK_PARSE_SPECIAL, "a model template writes its special tokens");
  chat_tmpl_destroy(&t);
  tok_destroy(&tok);
  cr_assert_null(model_chat_template_open("/nonexistent/model", &err));
}

/* Every expected string below was also checked against Jinja2 3.1 with trim_blocks and lstrip_blocks. */
Test(chat, whitespace_rules_match_hugging_face_jinja) {
  expect("  {% if true %}\n    x\n  {% endif %}\n", "    x\n");
  expect("  {%+ if true %}x{% endif %}", "  x");
  expect("x  {{- 'a' -}}  y", "xay");
  expect("  {{ 'a' }}\n", "  a");
  expect("a\r\nb", "a\nb");
  expect("a\n\n", "a\n");
  expect("{# c #}\nx", "x");
  expect("  {# c #}\n  y", "  y");
}

Test(chat, jinja_features_used_by_templates) {
  static const char *src =
      "{#- a comment -#}\n"
      "{%- set ns = namespace(n=0, sys='') -%}\n"
      "{%- for m in messages if m.role != 'system' -%}\n"
      "  {%- set ns.n = ns.n + 1 -%}\n"
      "{%- else -%}\n"
      "none\n"
      "{%- endfor -%}\n"
      "[{{ ns.n }}]\n"
      "{% for m in messages %}\n"
      "    {% if m['role'] is defined and m.role in ['user', 'assistant'] %}\n"
      "{{ loop.index }}/{{ loop.length }} {{ m.role | upper ~ ':' }} {{ m.content[::-1] }}\n"
      "    {% endif %}\n"
      "{% endfor %}\n"
      "{{ missing | default('dflt') }} {{ 'x' if missing is undefined else 'y' }} {{ -7 // 2 }} {{ -7 % 3 }}\n"
      "{{ {'a': [1, 'b', none, true]} | tojson }} {{ messages | length }} {{ ['a', 'b'] | join('+') }}\n"
      "{% set block %}  kept {{ 1 + 2 }}{% endset %}[{{ block }}]\n"
      "{% for k, v in {'x': 1, 'y': 2}.items() %}{{ k }}={{ v }}{{ ',' if not loop.last }}{% endfor %}\n"
      "{{ 'tab\\there' }} {{ \"it's\" }} {{ 'caf\\u00e9' | length }} {{ 'a b  c'.split() | join('|') }}\n";
  static const char *const conv[] = {"system", "S", "user", "abc", "assistant", "xy", NULL};
  char *out = render(src, false, conv);
  cr_assert_str_eq(out, "[2]\n2/3 USER: cba\n3/3 ASSISTANT: yx\ndflt x -4 2\n{\"a\": [1, \"b\", null, true]} 3 a+b\n"
                        "[  kept 3]\nx=1,y=2tab\there it's 4 a|b|c");
  free(out);
  /* Loop scoping: a set inside a loop does not leak out; a namespace carries values out. */
  expect("{% set x = 1 %}{% for i in [1, 2] %}{% set x = i %}{% endfor %}{{ x }}", "1");
  expect("{{ 'Hello World'[6:] }}{{ [1, 2, 3][-1] }}{{ 'abc'.startswith('ab') }}{{ 'x,y'.split(',') }}",
         "World3True['x', 'y']");
  expect("{{ none }} {{ true }} {{ 10 - 3 * 2 }} {{ 'a' * 3 }} {{ {'k': 'v'}.get('k') }} {{ {'k': 1}.get('z', 0) }}",
         "None True 4 aaa v 0");
  expect("{{ 'x' ~ 1 }}{{ 'Title me' | title }}{{ ' pad ' | trim | capitalize }}{{ range(3) | join }}",
         "x1Title MePad012");
}

static void expect_error(const char *src, lt_status_t code, const char *msg) {
  lt_err_t err = {0};
  chat_tmpl_t *t = chat_tmpl_new(src, NULL, NULL, &err);
  if (t) {
    char *out = NULL;
    size_t len;
    cr_assert_eq(chat_render(t, NULL, 0, false, &out, &len, &err), code, "%s: %s", src, err.msg);
    cr_assert_null(out);
    chat_tmpl_destroy(&t);
  } else
    cr_assert_eq(err.code, code, "%s: %s", src, err.msg);
  cr_assert(strstr(err.msg, msg), "%s: %s", src, err.msg);
}

Test(chat, errors_name_the_line) {
  expect_error("{% macro x() %}{% endmacro %}", LT_E_UNSUPPORTED, "line 1: 'macro' tags are not supported");
  expect_error("a\n{{ 'x' | nope }}", LT_E_UNSUPPORTED, "line 2: unknown filter 'nope'");
  expect_error("a\n\n{% if x %}", LT_E_INVALID, "line 3: 'if' without 'endif'");
  expect_error("{{ 'a' ", LT_E_INVALID, "line 1: unclosed {{");
  expect_error("{% endif %}", LT_E_INVALID, "unexpected 'endif'");
  expect_error("{{ 1.5 }}", LT_E_UNSUPPORTED, "floating-point");
  expect_error("{{ 'a' + 1 }}", LT_E_INVALID, "cannot add string and integer");
  expect_error("{{ messages[0].role }}", LT_E_INVALID, "is undefined");
  expect_error("{{ raise_exception('nope') }}", LT_E_INVALID, "line 1: raise_exception: nope");
  expect_error("{{ x + }}", LT_E_INVALID, "unexpected end of tag");
  expect_error("{{ 'a' * 100000000 }}", LT_E_LIMIT, "too large");
  char deep[2100];
  memset(deep, 0, sizeof deep);
  strcpy(deep, "{{ ");
  for (int i = 0; i < 1000; i++) strcat(deep, "(");
  strcat(deep, " }}");
  expect_error(deep, LT_E_LIMIT, "nested more than 200 deep");
  strcpy(deep, "{{ ");
  for (int i = 0; i < 500; i++) strcat(deep, "not ");
  strcat(deep, "x }}");
  expect_error(deep, LT_E_LIMIT, "nested more than 200 deep");
  expect_error("{% for i in range(99999) %}{% for j in range(99999) %}{{ i }}{% endfor %}{% endfor %}", LT_E_LIMIT,
               "MiB");
}
