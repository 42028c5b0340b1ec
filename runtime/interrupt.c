/* interrupt.c: SIGINT and SIGTERM during a run. The handler only records the signal;
 * the training loop looks at it at a step boundary (on N devices the devices agree on it
 * in the step's one all-reduce), finishes the step, writes the checkpoint and stops. The
 * handler is reset on delivery, so a second Ctrl-C stops the process at once. */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdatomic.h>

#include "train.h"

static volatile sig_atomic_t got_signal;
static atomic_flag installed = ATOMIC_FLAG_INIT;

static void on_signal(int sig) {
  got_signal = sig;
}

void rt_interrupt_install(void) {
  if (atomic_flag_test_and_set(&installed)) return; /* once per process (device threads) */
  struct sigaction sa = {0};
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART | SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
}

int rt_interrupt_signal(void) {
  return got_signal;
}
