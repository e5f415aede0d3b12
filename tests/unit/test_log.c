/* SPDX-License-Identifier: Apache-2.0 */
/* The escaping of log values (p11psk_log_value) and the control-character check. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "unit.h"

static char out[256];

static const char *esc(const char *in)
{
    ck_assert_int_eq(p11psk_log_value(out, sizeof(out), in), 0);
    return out;
}

START_TEST(plain_values_pass)
{
    ck_assert_str_eq(esc("alpha"), "alpha");
    ck_assert_str_eq(esc("/usr/bin/openssl"), "/usr/bin/openssl");
    ck_assert_str_eq(esc("caf\xc3\xa9"), "caf\xc3\xa9"); /* UTF-8 stays */
}
END_TEST

START_TEST(quoted_values)
{
    ck_assert_str_eq(esc(""), "\"\"");
    ck_assert_str_eq(esc("x result=ok"), "\"x result=ok\"");
    ck_assert_str_eq(esc("a=b"), "\"a=b\"");
    ck_assert_str_eq(esc("say \"hi\""), "\"say \\\"hi\\\"\"");
    ck_assert_str_eq(esc("back\\slash"), "\"back\\\\slash\"");
    ck_assert_str_eq(esc("/usr/bin/x (deleted)"), "\"/usr/bin/x (deleted)\"");
}
END_TEST

START_TEST(control_characters)
{
    ck_assert_str_eq(esc("a\nb"), "\"a\\nb\"");
    ck_assert_str_eq(esc("a\tb\r"), "\"a\\tb\\r\"");
    ck_assert_str_eq(esc("\x01\x1b\x7f"), "\"\\x01\\x1b\\x7f\"");
    /* No raw control byte survives, whatever the input. */
    {
        char in[64];
        size_t i;

        for (i = 0; i < sizeof(in) - 1; i++)
            in[i] = (char)(i + 1);
        in[sizeof(in) - 1] = '\0';
        esc(in);
        for (i = 0; out[i] != '\0'; i++)
            ck_assert_msg((unsigned char)out[i] >= 0x20 && out[i] != 0x7f, "byte %zu", i);
    }
}
END_TEST

START_TEST(truncation_keeps_a_whole_value)
{
    char small[8];

    /* "\"a\\nb\\n\"" needs 9 bytes with the NUL: cut before an escape, still quoted. */
    ck_assert_int_eq(p11psk_log_value(small, sizeof(small), "a\nb\nc"), -1);
    ck_assert_str_eq(small, "\"a\\nb\"");
    ck_assert_int_eq(p11psk_log_value(small, sizeof(small), "abcdefghij"), -1);
    ck_assert_str_eq(small, "abcdefg");
    ck_assert_int_eq(p11psk_log_value(small, 2, "a"), -1);
    ck_assert_str_eq(small, "");
    ck_assert_int_eq(p11psk_log_value(small, 3, "ab"), 0);
    ck_assert_str_eq(small, "ab");
}
END_TEST

START_TEST(first_ctrl)
{
    ck_assert_int_eq(p11psk_first_ctrl("web-1"), -1);
    ck_assert_int_eq(p11psk_first_ctrl("x result=ok"), -1);
    ck_assert_int_eq(p11psk_first_ctrl("bad\nlabel"), 0x0a);
    ck_assert_int_eq(p11psk_first_ctrl("t\tx\n"), 0x09);
    ck_assert_int_eq(p11psk_first_ctrl("del\x7f"), 0x7f);
    ck_assert_int_eq(p11psk_first_ctrl("caf\xc3\xa9"), -1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("log");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, plain_values_pass);
    tcase_add_test(tc, quoted_values);
    tcase_add_test(tc, control_characters);
    tcase_add_test(tc, truncation_keeps_a_whole_value);
    tcase_add_test(tc, first_ctrl);
    suite_add_tcase(s, tc);
    return p11psk_unit_run(s);
}
