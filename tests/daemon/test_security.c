/* Authentication: over TCP only CURVE keys in the allow folder get in (and TCP without one is refused at
 * start); on the ipc socket only the daemon's own uid gets in, even when the socket file is open to all. */
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "common/util.h"
#include "td.h"

static td_t t;

static void setup(void) { memset(&t, 0, sizeof t); }
static void teardown(void) { td_cleanup(&t); }

TestSuite(security, .init = setup, .fini = teardown, .timeout = 60);

/* Writes a CURVE key pair as DIR/NAME.key and DIR/NAME.pub. */
static void keypair(const char *dir, const char *name) {
  char pub[41], sec[41], path[256];
  cr_assert_eq(zmq_curve_keypair(pub, sec), 0);
  snprintf(path, sizeof path, "%s/%s.key", dir, name);
  cr_assert_eq(util_write_z85_key(path, sec, true, NULL), LT_OK);
  snprintf(path, sizeof path, "%s/%s.pub", dir, name);
  cr_assert_eq(util_write_z85_key(path, pub, false, NULL), LT_OK);
}

static lt_status_t tcp_ping(const char *ep, const char *server_pub, const char *key, proto_err_t *pe) {
  lc_opts_t o = {.connect = ep, .server_key = server_pub, .client_key = key, .timeout_ms = 3000};
  lt_err_t err = {0};
  lc_t *c = lc_new(&o, &err);
  cr_assert_not_null(c, "%s", err.msg);
  mpw_t w;
  lc_begin(c, &w, "ping");
  mp_doc_t *d = lc_call(c, &w, pe, &err);
  lt_status_t st = d ? LT_OK : LT_E_IO;
  mp_doc_destroy(&d);
  lc_destroy(&c);
  return st;
}

Test(security, curve_known_key_accepted_unknown_refused) {
  char keys[96], allow[96], ep[64], server_pub[160], alice[128], mallory[128];
  /* The folder first, to hold the keys before the daemon starts. */
  td_prepare(&t);
  snprintf(keys, sizeof keys, "%s/keys", t.dir);
  snprintf(allow, sizeof allow, "%s/allow", t.dir);
  util_mkdir_p(keys, 0700, NULL), util_mkdir_p(allow, 0700, NULL);
  keypair(keys, "alice"), keypair(keys, "mallory");
  char src[160], dst[160];
  snprintf(src, sizeof src, "%s/alice.pub", keys);
  snprintf(dst, sizeof dst, "%s/alice.pub", allow);
  char key[41];
  cr_assert_eq(util_read_z85_key(src, key, NULL), LT_OK);
  cr_assert_eq(util_write_z85_key(dst, key, false, NULL), LT_OK);
  const char *args[] = {"--tcp", "tcp://127.0.0.1:*", "--curve-allow", allow, NULL};
  td_start(&t, args);
  /* The port the system picked, from the daemon's status. */
  lc_t *local = td_client(&t);
  mp_doc_t *st = td_status(local);
  cr_assert(mp_str_copy(mp_get(mp_doc_root(st), "tcp"), ep, sizeof ep) && strncmp(ep, "tcp://127.0.0.1:", 16) == 0);
  mp_doc_destroy(&st);
  snprintf(server_pub, sizeof server_pub, "%s/curve/server.pub", t.home);
  snprintf(alice, sizeof alice, "%s/alice.key", keys);
  snprintf(mallory, sizeof mallory, "%s/mallory.key", keys);
  proto_err_t pe = {0};
  cr_assert_eq(tcp_ping(ep, server_pub, alice, &pe), LT_OK, "alice is allowed: %s", pe.msg);
  pe.code = P_OK;
  cr_assert_neq(tcp_ping(ep, server_pub, mallory, &pe), LT_OK, "mallory is not in the allow folder");
  cr_assert_eq(pe.code, P_DENIED, "the refusal is seen as such (got %s)", proto_code_str(pe.code));
  /* Alice's jobs are owned by her key's name. */
  lc_opts_t o = {.connect = ep, .server_key = server_pub, .client_key = alice};
  lc_t *c = lc_new(&o, NULL);
  int64_t id = lc_submit(c, "sleep", NULL, 0, NULL, 0, true, NULL, NULL, NULL);
  mp_doc_t *d = td_show(c, id);
  cr_assert(td_has(mp_get(mp_doc_root(d), "job"), "owner", "key:alice"));
  mp_doc_destroy(&d);
  lc_destroy(&c);
  d = td_status(local);
  cr_assert_geq(td_int(mp_doc_root(d), "auth_denied"), 1);
  mp_doc_destroy(&d);
  lc_destroy(&local);
}

Test(security, tcp_without_an_allow_folder_is_refused) {
  int rc = td_start_expect_exit(&t, (const char *const[]){"--tcp", "tcp://127.0.0.1:1", NULL}, 5000);
  cr_assert(rc > 0, "lathed must refuse TCP without --curve-allow (exit %d)", rc);
  char empty[96];
  snprintf(empty, sizeof empty, "%s/empty", t.dir);
  util_mkdir_p(empty, 0700, NULL);
  rc =
      td_start_expect_exit(&t, (const char *const[]){"--tcp", "tcp://127.0.0.1:1", "--curve-allow", empty, NULL}, 5000);
  cr_assert(rc > 0, "lathed must refuse TCP with no allowed key (exit %d)", rc);
}

/* In a child running as nobody: 0 if the daemon refused or never answered, 1 if it answered. */
static int ping_as_nobody(const char *sock) {
  pid_t pid = fork();
  cr_assert(pid >= 0);
  if (pid == 0) {
    if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0) _exit(2);
    lc_opts_t o = {.socket = sock, .timeout_ms = 1500};
    lc_t *c = lc_new(&o, NULL);
    if (!c) _exit(0);
    mpw_t w;
    lc_begin(c, &w, "ping");
    mp_doc_t *d = lc_call(c, &w, NULL, NULL);
    _exit(d ? 1 : 0);
  }
  int st;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st);
}

Test(security, other_uid_cannot_use_the_ipc_socket) {
  if (geteuid() != 0) cr_skip_test("needs root to run a client as another uid (nobody)");
  /* A socket folder open to everyone, so that only the ZAP handler stands in the way. */
  td_prepare(&t);
  char run[96];
  snprintf(run, sizeof run, "%s/run", t.dir);
  util_mkdir_p(run, 0755, NULL);
  chmod(t.dir, 0755), chmod(run, 0755);
  td_start(&t, NULL);
  chmod(t.sock, 0666);
  int got = ping_as_nobody(t.sock);
  cr_assert_eq(got, 0, "uid nobody got an answer (child status %d)", got);
  lc_t *c = td_client(&t);
  mp_doc_t *d = td_status(c);
  cr_assert_geq(td_int(mp_doc_root(d), "auth_denied"), 1, "the ZAP handler refused it");
  mp_doc_destroy(&d);
  lc_destroy(&c);
  /* And the normal setup: a private folder keeps other users from connecting at all. */
  chmod(run, 0700);
  cr_assert_eq(ping_as_nobody(t.sock), 0);
}
