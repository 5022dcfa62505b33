"""The packaged executable's entry point: the same CLI as the `mdm-appliance` console script."""

from appliance.cli import main

main(prog_name="mdm-appliance")
