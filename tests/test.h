/* test.h: a tiny assertion harness for C tests. Assertions are always on. */
#ifndef MOEC_TEST_H
#define MOEC_TEST_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static int test_failures __attribute__((unused)), test_checks __attribute__((unused));

#define CHECK(cond)                                                           \
  do {                                                                        \
    test_checks++;                                                            \
    if (!(cond)) {                                                            \
      test_failures++;                                                        \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                         \
  } while (0)

#define CHECK_CLOSE(a, b, rtol, atol)                                                       \
  do {                                                                                      \
    double a_ = (a), b_ = (b);                                                              \
    test_checks++;                                                                          \
    if (!(fabs(a_ - b_) <= (atol) + (rtol) * fabs(b_)) || a_ != a_ || b_ != b_) {           \
      test_failures++;                                                                      \
      fprintf(stderr, "%s:%d: %s = %.10g, expected %s = %.10g\n", __FILE__, __LINE__, #a, a_, \
              #b, b_);                                                                      \
    }                                                                                       \
  } while (0)

/* Runs fn(arg) in a child process with its stderr read into msg[cap] (NUL-terminated):
 * for the checks that bad input ends in a clear error, not a crash. Returns the child's
 * wait status (it exits 0 when fn returns), -1 if no child ran. */
static int __attribute__((unused)) test_in_child(void (*fn)(void *), void *arg, char *msg,
                                                 size_t cap) {
  int fd[2];
  msg[0] = 0;
  if (pipe(fd) != 0) return -1;
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fd[1], 2);
    close(fd[0]);
    fn(arg);
    _exit(0);
  }
  close(fd[1]);
  size_t len = 0;
  ssize_t k;
  while (pid > 0 && len < cap - 1 && (k = read(fd[0], msg + len, cap - 1 - len)) > 0)
    len += (size_t)k;
  msg[len] = 0;
  close(fd[0]);
  int st = -1;
  if (pid > 0) waitpid(pid, &st, 0);
  return st;
}

/* Ends main: prints the summary, exit status 1 if anything failed. */
#define TEST_DONE()                                                                     \
  do {                                                                                  \
    printf("%d checks, %d failed\n", test_checks, test_failures);                       \
    return test_failures ? 1 : 0;                                                       \
  } while (0)
#endif
