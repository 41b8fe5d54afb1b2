#!/bin/sh
# A post-event script: the rule action "TRUE servicebooted.sh" runs it when a
# VM of the example deployment answers (again). Store it with:
#   escadm script import examples/servicebooted.sh
echo "VM $ESC_VM_NAME ($ESC_VM_ID) of $ESC_TENANT/$ESC_DEPLOYMENT is up at $ESC_VM_ADDRESS"
