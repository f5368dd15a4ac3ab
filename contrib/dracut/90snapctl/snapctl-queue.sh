#!/bin/sh
# dracut cmdline hook (sourced): queue snapctl activation as a job of the
# main loop, run each time udev has settled until it has done its work.
/sbin/initqueue --settled --unique --name snapctl-activate /sbin/snapctl-activate
