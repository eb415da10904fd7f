/* passphrase.c: a passphrase typed on the terminal, without echo. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "cli/cli.h"

static char *read_line(FILE *tty, const char *prompt)
{
    struct termios old, quiet;
    char buf[1024];
    int fd = fileno(tty);
    bool restore = tcgetattr(fd, &old) == 0;

    /* Echo off before the prompt shows: what is typed once it shows must
     * not be flushed by the change (TCSAFLUSH drops only what came before). */
    if (restore) {
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        tcsetattr(fd, TCSAFLUSH, &quiet);
    }
    fprintf(stderr, "%s", prompt);
    fflush(stderr);
    char *got = fgets(buf, sizeof buf, tty);
    if (restore)
        tcsetattr(fd, TCSANOW, &old);
    fputc('\n', stderr);
    if (!got)
        return NULL;
    buf[strcspn(buf, "\r\n")] = 0;
    char *p = strdup(buf);
    memset(buf, 0, sizeof buf);
    return p;
}

char *cli_ask_passphrase(const char *repo, bool confirm)
{
    char prompt[600];

    if (!isatty(STDIN_FILENO))
        return NULL;
    FILE *tty = fopen("/dev/tty", "r+");
    if (!tty)
        return NULL;
    snprintf(prompt, sizeof prompt, "%s passphrase for %s: ", confirm ? "New" : "The", repo);
    char *p = read_line(tty, prompt);
    if (p && confirm) {
        char *again = read_line(tty, "The same again: ");
        if (!again || strcmp(p, again)) {
            fprintf(stderr, "nbdvault: the two passphrases differ\n");
            memset(p, 0, strlen(p));
            free(p);
            p = NULL;
        }
        if (again) {
            memset(again, 0, strlen(again));
            free(again);
        }
    }
    fclose(tty);
    return p;
}
