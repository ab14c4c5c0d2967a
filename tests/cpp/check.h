/* A tiny test harness for the C and C++ tests (no framework to download): CHECK(cond) and
 * friends print file:line and the failed expression, count failures, and main() returns
 * dk_test_summary() (0 only when every check passed), which is what ctest looks at. */
#ifndef DK_TESTS_CHECK_H_
#define DK_TESTS_CHECK_H_

#include <stdio.h>
#include <string.h>

static int dk_test_failures = 0;
static int dk_test_checks = 0;

#define CHECK(cond)                                                              \
  do {                                                                           \
    ++dk_test_checks;                                                            \
    if (!(cond)) {                                                               \
      ++dk_test_failures;                                                        \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);  \
    }                                                                            \
  } while (0)

/* Integer equality with both values printed. */
#define CHECK_EQ_I64(a, b)                                                                          \
  do {                                                                                              \
    long long dk_a_ = (long long)(a), dk_b_ = (long long)(b);                                       \
    ++dk_test_checks;                                                                               \
    if (dk_a_ != dk_b_) {                                                                           \
      ++dk_test_failures;                                                                           \
      fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %s (%lld vs %lld)\n", __FILE__, __LINE__, #a, \
              #b, dk_a_, dk_b_);                                                                    \
    }                                                                                               \
  } while (0)

/* A dk_* call returns `code`; on DK_OK mismatch the library's message is printed. */
#define CHECK_STATUS(call, code)                                                                \
  do {                                                                                          \
    int dk_s_ = (int)(call);                                                                    \
    ++dk_test_checks;                                                                           \
    if (dk_s_ != (int)(code)) {                                                                 \
      ++dk_test_failures;                                                                       \
      fprintf(stderr, "%s:%d: %s returned %d, expected %d (%s)\n", __FILE__, __LINE__, #call,   \
              dk_s_, (int)(code), dk_last_error());                                             \
    }                                                                                           \
  } while (0)

/* The last error message mentions `text` (e.g. the argument's name). */
#define CHECK_ERROR_MENTIONS(text)                                                               \
  do {                                                                                           \
    ++dk_test_checks;                                                                            \
    if (strstr(dk_last_error(), (text)) == NULL) {                                               \
      ++dk_test_failures;                                                                        \
      fprintf(stderr, "%s:%d: error message \"%s\" does not mention \"%s\"\n", __FILE__, __LINE__, \
              dk_last_error(), (text));                                                          \
    }                                                                                            \
  } while (0)

static int dk_test_summary(const char* name) {
  if (dk_test_failures)
    fprintf(stderr, "%s: %d of %d checks FAILED\n", name, dk_test_failures, dk_test_checks);
  else
    printf("%s: all %d checks passed\n", name, dk_test_checks);
  return dk_test_failures ? 1 : 0;
}

/* Deterministic pseudo-random numbers (xorshift64*), identical on every platform. */
static unsigned long long dk_rng_state = 0x9E3779B97F4A7C15ull;
static void dk_seed(unsigned long long s) { dk_rng_state = s * 0x9E3779B97F4A7C15ull + 1; }
static unsigned long long dk_next(void) {
  dk_rng_state ^= dk_rng_state >> 12;
  dk_rng_state ^= dk_rng_state << 25;
  dk_rng_state ^= dk_rng_state >> 27;
  return dk_rng_state * 2685821657736338717ull;
}
/* Uniform integer in [0, n). */
static long long dk_randint(long long n) { return (long long)(dk_next() % (unsigned long long)n); }

#endif /* DK_TESTS_CHECK_H_ */
