/* test.h: a tiny assertion harness for C tests. Assertions are always on. */
#ifndef MOEC_TEST_H
#define MOEC_TEST_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

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

/* Ends main: prints the summary, exit status 1 if anything failed. */
#define TEST_DONE()                                                                     \
  do {                                                                                  \
    printf("%d checks, %d failed\n", test_checks, test_failures);                       \
    return test_failures ? 1 : 0;                                                       \
  } while (0)
#endif
