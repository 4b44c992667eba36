/* attnd-cli internals shared by its two files: cli.c (the command line,
 * health and stats) and demo.c (the built-in end-to-end client). */
#ifndef ATTND_CLI_H
#define ATTND_CLI_H

#include "attnd/client.h"

/* Run `attnd-cli demo` with the demo's own arguments (argv[0] is "demo"):
 * parse them, connect to target with opts, run, disconnect. Returns the
 * process exit code: 0 when every checked output was within the bound (or
 * --help), 1 when one was not or a call failed, 2 for a bad argument. */
int attnd_cli_demo(const char *target, const attnd_client_options *opts, int argc,
                   char **argv);

/* Parse a non-negative integer argument; -1 when it is not one. */
long long attnd_cli_parse_count(const char *s);

#endif /* ATTND_CLI_H */
