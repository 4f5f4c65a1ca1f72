/* The engine must fail with a clear, actionable error when Vulkan is missing, never crash. Each case runs in a
 * fresh child process, because the loader is opened once per process. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/gpu/gpu.h"

/* Runs gpu_new() in a child with one environment variable set; returns the child's status line. */
static void open_in_child(const char *var, const char *value, char *out, size_t cap) {
  int fds[2];
  cr_assert_eq(pipe(fds), 0);
  pid_t pid = fork();
  cr_assert(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    setenv(var, value, 1);
    lt_err_t err = {0};
    gpu_t *g = gpu_new(NULL, &err);
    char line[600];
    int n = snprintf(line, sizeof line, "%s|%s", g ? "opened" : lt_status_str(err.code), g ? "" : err.msg);
    if (write(fds[1], line, (size_t)n) < 0) _exit(2);
    gpu_destroy(&g);
    _exit(0);
  }
  close(fds[1]);
  ssize_t n = read(fds[0], out, cap - 1);
  out[n > 0 ? n : 0] = '\0';
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child crashed (status %d): %s", status, out);
}

Test(loader, missing_loader_names_the_package) {
  char line[600];
  open_in_child("LATHE_VULKAN_LIBRARY", "/nonexistent/libvulkan.so.1", line, sizeof line);
  cr_assert(strncmp(line, "no-vulkan|", 10) == 0, "got: %s", line);
  cr_assert(strstr(line, "apt-get install libvulkan1") != NULL, "names the package: %s", line);
}

Test(loader, missing_driver_names_the_package) {
  char line[600];
  open_in_child("VK_ICD_FILENAMES", "/nonexistent/icd.json", line, sizeof line);
  cr_assert(strncmp(line, "no-vulkan|", 10) == 0, "got: %s", line);
  cr_assert(strstr(line, "mesa-vulkan-drivers") != NULL, "names the package: %s", line);
}

Test(loader, unknown_device_choice_is_explained) {
  char line[600];
  open_in_child("LATHE_DEVICE", "99", line, sizeof line);
  cr_assert(strncmp(line, "invalid|", 8) == 0, "got: %s", line);
  cr_assert(strstr(line, "LATHE_DEVICE=99") != NULL, "names the setting: %s", line);
}

Test(loader, device_by_index_opens) {
  char line[600];
  open_in_child("LATHE_DEVICE", "0", line, sizeof line);
  cr_assert(strncmp(line, "opened|", 7) == 0, "got: %s", line);
}
