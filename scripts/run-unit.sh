#!/bin/sh
# Runs the cmocka unit-test binaries given as arguments and prints one
# closing line for all of them.  Exit 1 if any failed.
passed=0
failed=0
for t in "$@"; do
    if "$t"; then
        passed=$((passed + 1))
    else
        echo "unit: FAIL $t" >&2
        failed=$((failed + 1))
    fi
done
echo "unit test programs: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
