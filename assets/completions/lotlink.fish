# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_lotlink_global_optspecs
    string join \n v/verbose q/quiet h/help V/version
end

function __fish_lotlink_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_lotlink_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_lotlink_using_subcommand
    set -l cmd (__fish_lotlink_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c lotlink -n "__fish_lotlink_needs_command" -s v -l verbose -d 'More log output: -v debug, -vv trace (instead of `[log] level`; RUST_LOG wins over both)'
complete -c lotlink -n "__fish_lotlink_needs_command" -s q -l quiet -d 'Less log output: -q warnings and errors only, -qq errors only'
complete -c lotlink -n "__fish_lotlink_needs_command" -s h -l help -d 'Print help'
complete -c lotlink -n "__fish_lotlink_needs_command" -s V -l version -d 'Print version'
complete -c lotlink -n "__fish_lotlink_needs_command" -f -a "run" -d 'Run the gateway (the daemon)'
complete -c lotlink -n "__fish_lotlink_needs_command" -f -a "check-config" -d 'Validate a configuration file: prints "ok" or every problem; exit 0 or 1'
complete -c lotlink -n "__fish_lotlink_needs_command" -f -a "send" -d 'Send one signed request and print the platform\'s answer (a connectivity test)'
complete -c lotlink -n "__fish_lotlink_needs_command" -f -a "status" -d 'Show the running daemon\'s status (platform, outbox, spaces, drivers)'
complete -c lotlink -n "__fish_lotlink_needs_command" -f -a "dead" -d 'Dead letters of the running daemon'
complete -c lotlink -n "__fish_lotlink_needs_command" -f -a "space" -d 'The running daemon\'s space count'
complete -c lotlink -n "__fish_lotlink_needs_command" -f -a "outbox" -d 'The outbox on disk'
complete -c lotlink -n "__fish_lotlink_needs_command" -f -a "shrink" -d 'Shrink an image as the gateway would before upload and say what it did (for checking a camera\'s images; `--repeat` times it)'
complete -c lotlink -n "__fish_lotlink_needs_command" -f -a "push" -d 'Push a config to one or many gateways over the site broker and print each outcome (exit 0 applied/unchanged, 1 rejected/rolled back, 2 no answer in time)'
complete -c lotlink -n "__fish_lotlink_needs_command" -f -a "fleet" -d 'List the gateways on the site broker from their retained status (exit 1 if one is offline or stale)'
complete -c lotlink -n "__fish_lotlink_needs_command" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout'
complete -c lotlink -n "__fish_lotlink_needs_command" -f -a "man" -d 'Print the man page (roff) on stdout'
complete -c lotlink -n "__fish_lotlink_needs_command" -f -a "demo" -d 'Run the real pipeline against an in-process platform simulator and simulated lanes (builds with the `demo` feature only, the default for `cargo run`; not the .deb)'
complete -c lotlink -n "__fish_lotlink_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c lotlink -n "__fish_lotlink_using_subcommand run" -s c -l config -d 'Configuration file' -r -F
complete -c lotlink -n "__fish_lotlink_using_subcommand run" -l abandon-old-outbox -d 'After a local change of `[outbox] path`: start on the new path even though the old store still holds pending records. They stay on disk, untouched, and are NOT uploaded; needed once (the new path is recorded)'
complete -c lotlink -n "__fish_lotlink_using_subcommand run" -s v -l verbose -d 'More log output: -v debug, -vv trace (instead of `[log] level`; RUST_LOG wins over both)'
complete -c lotlink -n "__fish_lotlink_using_subcommand run" -s q -l quiet -d 'Less log output: -q warnings and errors only, -qq errors only'
complete -c lotlink -n "__fish_lotlink_using_subcommand run" -s h -l help -d 'Print help'
complete -c lotlink -n "__fish_lotlink_using_subcommand check-config" -s c -l config -d 'Configuration file' -r -F
complete -c lotlink -n "__fish_lotlink_using_subcommand check-config" -s v -l verbose -d 'More log output: -v debug, -vv trace (instead of `[log] level`; RUST_LOG wins over both)'
complete -c lotlink -n "__fish_lotlink_using_subcommand check-config" -s q -l quiet -d 'Less log output: -q warnings and errors only, -qq errors only'
complete -c lotlink -n "__fish_lotlink_using_subcommand check-config" -s h -l help -d 'Print help'
complete -c lotlink -n "__fish_lotlink_using_subcommand send" -s c -l config -d 'Configuration file' -r -F
complete -c lotlink -n "__fish_lotlink_using_subcommand send" -l surplus -d 'For `space`: the free spaces to report (default: the running daemon\'s count; exit 3 when it is not running)' -r
complete -c lotlink -n "__fish_lotlink_using_subcommand send" -s v -l verbose -d 'More log output: -v debug, -vv trace (instead of `[log] level`; RUST_LOG wins over both)'
complete -c lotlink -n "__fish_lotlink_using_subcommand send" -s q -l quiet -d 'Less log output: -q warnings and errors only, -qq errors only'
complete -c lotlink -n "__fish_lotlink_using_subcommand send" -s h -l help -d 'Print help'
complete -c lotlink -n "__fish_lotlink_using_subcommand status" -l url -d 'The daemon\'s status address (default: `[status] listen` of the config, or http://127.0.0.1:9870 when the config cannot be read, e.g. as a non-root user)' -r
complete -c lotlink -n "__fish_lotlink_using_subcommand status" -s c -l config -d 'Configuration file (for the status address)' -r -F
complete -c lotlink -n "__fish_lotlink_using_subcommand status" -l json -d 'Print the raw JSON'
complete -c lotlink -n "__fish_lotlink_using_subcommand status" -l check -d 'For monitoring scripts: print the problems (if any) and exit 0 when healthy, 1 when degraded, 3 when the daemon is not running'
complete -c lotlink -n "__fish_lotlink_using_subcommand status" -s v -l verbose -d 'More log output: -v debug, -vv trace (instead of `[log] level`; RUST_LOG wins over both)'
complete -c lotlink -n "__fish_lotlink_using_subcommand status" -s q -l quiet -d 'Less log output: -q warnings and errors only, -qq errors only'
complete -c lotlink -n "__fish_lotlink_using_subcommand status" -s h -l help -d 'Print help'
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and not __fish_seen_subcommand_from list retry drop help" -s v -l verbose -d 'More log output: -v debug, -vv trace (instead of `[log] level`; RUST_LOG wins over both)'
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and not __fish_seen_subcommand_from list retry drop help" -s q -l quiet -d 'Less log output: -q warnings and errors only, -qq errors only'
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and not __fish_seen_subcommand_from list retry drop help" -s h -l help -d 'Print help'
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and not __fish_seen_subcommand_from list retry drop help" -f -a "list" -d 'List the dead letters (records the platform refused for good)'
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and not __fish_seen_subcommand_from list retry drop help" -f -a "retry" -d 'Put a dead letter (or `all`) back into the outbox for upload'
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and not __fish_seen_subcommand_from list retry drop help" -f -a "drop" -d 'Delete a dead letter for good'
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and not __fish_seen_subcommand_from list retry drop help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and __fish_seen_subcommand_from list" -s c -l config -d 'Configuration file (for the status address)' -r -F
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and __fish_seen_subcommand_from list" -s v -l verbose -d 'More log output: -v debug, -vv trace (instead of `[log] level`; RUST_LOG wins over both)'
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and __fish_seen_subcommand_from list" -s q -l quiet -d 'Less log output: -q warnings and errors only, -qq errors only'
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and __fish_seen_subcommand_from retry" -s c -l config -d 'Configuration file (for the status address)' -r -F
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and __fish_seen_subcommand_from retry" -s v -l verbose -d 'More log output: -v debug, -vv trace (instead of `[log] level`; RUST_LOG wins over both)'
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and __fish_seen_subcommand_from retry" -s q -l quiet -d 'Less log output: -q warnings and errors only, -qq errors only'
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and __fish_seen_subcommand_from retry" -s h -l help -d 'Print help'
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and __fish_seen_subcommand_from drop" -s c -l config -d 'Configuration file (for the status address)' -r -F
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and __fish_seen_subcommand_from drop" -l yes -d 'Do not ask for confirmation'
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and __fish_seen_subcommand_from drop" -s v -l verbose -d 'More log output: -v debug, -vv trace (instead of `[log] level`; RUST_LOG wins over both)'
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and __fish_seen_subcommand_from drop" -s q -l quiet -d 'Less log output: -q warnings and errors only, -qq errors only'
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and __fish_seen_subcommand_from drop" -s h -l help -d 'Print help'
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and __fish_seen_subcommand_from help" -f -a "list" -d 'List the dead letters (records the platform refused for good)'
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and __fish_seen_subcommand_from help" -f -a "retry" -d 'Put a dead letter (or `all`) back into the outbox for upload'
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and __fish_seen_subcommand_from help" -f -a "drop" -d 'Delete a dead letter for good'
complete -c lotlink -n "__fish_lotlink_using_subcommand dead; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c lotlink -n "__fish_lotlink_using_subcommand space; and not __fish_seen_subcommand_from set help" -s v -l verbose -d 'More log output: -v debug, -vv trace (instead of `[log] level`; RUST_LOG wins over both)'
complete -c lotlink -n "__fish_lotlink_using_subcommand space; and not __fish_seen_subcommand_from set help" -s q -l quiet -d 'Less log output: -q warnings and errors only, -qq errors only'
complete -c lotlink -n "__fish_lotlink_using_subcommand space; and not __fish_seen_subcommand_from set help" -s h -l help -d 'Print help'
complete -c lotlink -n "__fish_lotlink_using_subcommand space; and not __fish_seen_subcommand_from set help" -f -a "set" -d 'Re-base the occupied count (after counting the lot by hand)'
complete -c lotlink -n "__fish_lotlink_using_subcommand space; and not __fish_seen_subcommand_from set help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c lotlink -n "__fish_lotlink_using_subcommand space; and __fish_seen_subcommand_from set" -l occupied -d 'Vehicles in the lot now' -r
complete -c lotlink -n "__fish_lotlink_using_subcommand space; and __fish_seen_subcommand_from set" -s c -l config -d 'Configuration file (for the status address)' -r -F
complete -c lotlink -n "__fish_lotlink_using_subcommand space; and __fish_seen_subcommand_from set" -s v -l verbose -d 'More log output: -v debug, -vv trace (instead of `[log] level`; RUST_LOG wins over both)'
complete -c lotlink -n "__fish_lotlink_using_subcommand space; and __fish_seen_subcommand_from set" -s q -l quiet -d 'Less log output: -q warnings and errors only, -qq errors only'
complete -c lotlink -n "__fish_lotlink_using_subcommand space; and __fish_seen_subcommand_from set" -s h -l help -d 'Print help'
complete -c lotlink -n "__fish_lotlink_using_subcommand space; and __fish_seen_subcommand_from help" -f -a "set" -d 'Re-base the occupied count (after counting the lot by hand)'
complete -c lotlink -n "__fish_lotlink_using_subcommand space; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c lotlink -n "__fish_lotlink_using_subcommand outbox; and not __fish_seen_subcommand_from aside help" -s v -l verbose -d 'More log output: -v debug, -vv trace (instead of `[log] level`; RUST_LOG wins over both)'
complete -c lotlink -n "__fish_lotlink_using_subcommand outbox; and not __fish_seen_subcommand_from aside help" -s q -l quiet -d 'Less log output: -q warnings and errors only, -qq errors only'
complete -c lotlink -n "__fish_lotlink_using_subcommand outbox; and not __fish_seen_subcommand_from aside help" -s h -l help -d 'Print help'
complete -c lotlink -n "__fish_lotlink_using_subcommand outbox; and not __fish_seen_subcommand_from aside help" -f -a "aside" -d 'List what the outbox moved aside: sled index files it could not open, damaged log ranges, a whole store whose log could not be read. Reads only; never creates the store'
complete -c lotlink -n "__fish_lotlink_using_subcommand outbox; and not __fish_seen_subcommand_from aside help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c lotlink -n "__fish_lotlink_using_subcommand outbox; and __fish_seen_subcommand_from aside" -s c -l config -d 'Configuration file (for `[outbox] path`)' -r -F
complete -c lotlink -n "__fish_lotlink_using_subcommand outbox; and __fish_seen_subcommand_from aside" -s v -l verbose -d 'More log output: -v debug, -vv trace (instead of `[log] level`; RUST_LOG wins over both)'
complete -c lotlink -n "__fish_lotlink_using_subcommand outbox; and __fish_seen_subcommand_from aside" -s q -l quiet -d 'Less log output: -q warnings and errors only, -qq errors only'
complete -c lotlink -n "__fish_lotlink_using_subcommand outbox; and __fish_seen_subcommand_from aside" -s h -l help -d 'Print help'
complete -c lotlink -n "__fish_lotlink_using_subcommand outbox; and __fish_seen_subcommand_from help" -f -a "aside" -d 'List what the outbox moved aside: sled index files it could not open, damaged log ranges, a whole store whose log could not be read. Reads only; never creates the store'
complete -c lotlink -n "__fish_lotlink_using_subcommand outbox; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c lotlink -n "__fish_lotlink_using_subcommand shrink" -l out -d 'Write the result here' -r -F
complete -c lotlink -n "__fish_lotlink_using_subcommand shrink" -l repeat -d 'Shrink this many times and print the median time' -r
complete -c lotlink -n "__fish_lotlink_using_subcommand shrink" -s v -l verbose -d 'More log output: -v debug, -vv trace (instead of `[log] level`; RUST_LOG wins over both)'
complete -c lotlink -n "__fish_lotlink_using_subcommand shrink" -s q -l quiet -d 'Less log output: -q warnings and errors only, -qq errors only'
complete -c lotlink -n "__fish_lotlink_using_subcommand shrink" -s h -l help -d 'Print help'
complete -c lotlink -n "__fish_lotlink_using_subcommand push" -l broker -d 'The site broker: mqtt://host[:1883] or mqtts://host[:8883]' -r
complete -c lotlink -n "__fish_lotlink_using_subcommand push" -l username -d 'User name at the broker (default: $LOTLINK_MQTT_USERNAME)' -r
complete -c lotlink -n "__fish_lotlink_using_subcommand push" -l password -d 'Password at the broker (default: $LOTLINK_MQTT_PASSWORD, which does not show in `ps`)' -r
complete -c lotlink -n "__fish_lotlink_using_subcommand push" -l ca-file -d 'PEM file of the CA that signed an mqtts:// broker\'s certificate (default: system roots)' -r -F
complete -c lotlink -n "__fish_lotlink_using_subcommand push" -l lot -d 'A lot code to push to; repeat for several lots' -r
complete -c lotlink -n "__fish_lotlink_using_subcommand push" -l lots-file -d 'A file of lot codes, one a line (blank lines and `#` comments skipped)' -r -F
complete -c lotlink -n "__fish_lotlink_using_subcommand push" -l key-file -d 'The push key: a file whose first line is the gateways\' `[management]` key' -r -F
complete -c lotlink -n "__fish_lotlink_using_subcommand push" -l version -d 'The push version (default: each gateway\'s config_version from its retained status, plus one)' -r
complete -c lotlink -n "__fish_lotlink_using_subcommand push" -l timeout -d 'How long to wait for the answers (the gateways\' watch window included)' -r
complete -c lotlink -n "__fish_lotlink_using_subcommand push" -l prefix -d 'The gateways\' `[management] topic_prefix`; `{lot_code}` is replaced' -r
complete -c lotlink -n "__fish_lotlink_using_subcommand push" -l revert -d 'Go back to each gateway\'s local config file (removes its pushed config)'
complete -c lotlink -n "__fish_lotlink_using_subcommand push" -s v -l verbose -d 'More log output: -v debug, -vv trace (instead of `[log] level`; RUST_LOG wins over both)'
complete -c lotlink -n "__fish_lotlink_using_subcommand push" -s q -l quiet -d 'Less log output: -q warnings and errors only, -qq errors only'
complete -c lotlink -n "__fish_lotlink_using_subcommand push" -s h -l help -d 'Print help'
complete -c lotlink -n "__fish_lotlink_using_subcommand fleet" -l broker -d 'The site broker: mqtt://host[:1883] or mqtts://host[:8883]' -r
complete -c lotlink -n "__fish_lotlink_using_subcommand fleet" -l username -d 'User name at the broker (default: $LOTLINK_MQTT_USERNAME)' -r
complete -c lotlink -n "__fish_lotlink_using_subcommand fleet" -l password -d 'Password at the broker (default: $LOTLINK_MQTT_PASSWORD, which does not show in `ps`)' -r
complete -c lotlink -n "__fish_lotlink_using_subcommand fleet" -l ca-file -d 'PEM file of the CA that signed an mqtts:// broker\'s certificate (default: system roots)' -r -F
complete -c lotlink -n "__fish_lotlink_using_subcommand fleet" -l prefix -d 'Topic prefix above the lot codes (statuses are read from `{prefix}/+/status`)' -r
complete -c lotlink -n "__fish_lotlink_using_subcommand fleet" -l stale -d 'A status older than this counts as stale (gateways refresh it every minute)' -r
complete -c lotlink -n "__fish_lotlink_using_subcommand fleet" -l timeout -d 'How long to wait for the broker' -r
complete -c lotlink -n "__fish_lotlink_using_subcommand fleet" -l json -d 'Print a JSON array for scripts'
complete -c lotlink -n "__fish_lotlink_using_subcommand fleet" -s v -l verbose -d 'More log output: -v debug, -vv trace (instead of `[log] level`; RUST_LOG wins over both)'
complete -c lotlink -n "__fish_lotlink_using_subcommand fleet" -s q -l quiet -d 'Less log output: -q warnings and errors only, -qq errors only'
complete -c lotlink -n "__fish_lotlink_using_subcommand fleet" -s h -l help -d 'Print help'
complete -c lotlink -n "__fish_lotlink_using_subcommand completions" -s v -l verbose -d 'More log output: -v debug, -vv trace (instead of `[log] level`; RUST_LOG wins over both)'
complete -c lotlink -n "__fish_lotlink_using_subcommand completions" -s q -l quiet -d 'Less log output: -q warnings and errors only, -qq errors only'
complete -c lotlink -n "__fish_lotlink_using_subcommand completions" -s h -l help -d 'Print help'
complete -c lotlink -n "__fish_lotlink_using_subcommand man" -s v -l verbose -d 'More log output: -v debug, -vv trace (instead of `[log] level`; RUST_LOG wins over both)'
complete -c lotlink -n "__fish_lotlink_using_subcommand man" -s q -l quiet -d 'Less log output: -q warnings and errors only, -qq errors only'
complete -c lotlink -n "__fish_lotlink_using_subcommand man" -s h -l help -d 'Print help'
complete -c lotlink -n "__fish_lotlink_using_subcommand demo" -l duration -d 'Stop after this long (e.g. "40s"); default: run until Ctrl-C' -r
complete -c lotlink -n "__fish_lotlink_using_subcommand demo" -l interval -d 'Seconds between plates per lane' -r
complete -c lotlink -n "__fish_lotlink_using_subcommand demo" -l online -d 'Platform up for this long, then offline for `outage`, repeating' -r
complete -c lotlink -n "__fish_lotlink_using_subcommand demo" -l outage -d 'How long each platform outage lasts' -r
complete -c lotlink -n "__fish_lotlink_using_subcommand demo" -s v -l verbose -d 'More log output: -v debug, -vv trace (instead of `[log] level`; RUST_LOG wins over both)'
complete -c lotlink -n "__fish_lotlink_using_subcommand demo" -s q -l quiet -d 'Less log output: -q warnings and errors only, -qq errors only'
complete -c lotlink -n "__fish_lotlink_using_subcommand demo" -s h -l help -d 'Print help'
complete -c lotlink -n "__fish_lotlink_using_subcommand help; and not __fish_seen_subcommand_from run check-config send status dead space outbox shrink push fleet completions man demo help" -f -a "run" -d 'Run the gateway (the daemon)'
complete -c lotlink -n "__fish_lotlink_using_subcommand help; and not __fish_seen_subcommand_from run check-config send status dead space outbox shrink push fleet completions man demo help" -f -a "check-config" -d 'Validate a configuration file: prints "ok" or every problem; exit 0 or 1'
complete -c lotlink -n "__fish_lotlink_using_subcommand help; and not __fish_seen_subcommand_from run check-config send status dead space outbox shrink push fleet completions man demo help" -f -a "send" -d 'Send one signed request and print the platform\'s answer (a connectivity test)'
complete -c lotlink -n "__fish_lotlink_using_subcommand help; and not __fish_seen_subcommand_from run check-config send status dead space outbox shrink push fleet completions man demo help" -f -a "status" -d 'Show the running daemon\'s status (platform, outbox, spaces, drivers)'
complete -c lotlink -n "__fish_lotlink_using_subcommand help; and not __fish_seen_subcommand_from run check-config send status dead space outbox shrink push fleet completions man demo help" -f -a "dead" -d 'Dead letters of the running daemon'
complete -c lotlink -n "__fish_lotlink_using_subcommand help; and not __fish_seen_subcommand_from run check-config send status dead space outbox shrink push fleet completions man demo help" -f -a "space" -d 'The running daemon\'s space count'
complete -c lotlink -n "__fish_lotlink_using_subcommand help; and not __fish_seen_subcommand_from run check-config send status dead space outbox shrink push fleet completions man demo help" -f -a "outbox" -d 'The outbox on disk'
complete -c lotlink -n "__fish_lotlink_using_subcommand help; and not __fish_seen_subcommand_from run check-config send status dead space outbox shrink push fleet completions man demo help" -f -a "shrink" -d 'Shrink an image as the gateway would before upload and say what it did (for checking a camera\'s images; `--repeat` times it)'
complete -c lotlink -n "__fish_lotlink_using_subcommand help; and not __fish_seen_subcommand_from run check-config send status dead space outbox shrink push fleet completions man demo help" -f -a "push" -d 'Push a config to one or many gateways over the site broker and print each outcome (exit 0 applied/unchanged, 1 rejected/rolled back, 2 no answer in time)'
complete -c lotlink -n "__fish_lotlink_using_subcommand help; and not __fish_seen_subcommand_from run check-config send status dead space outbox shrink push fleet completions man demo help" -f -a "fleet" -d 'List the gateways on the site broker from their retained status (exit 1 if one is offline or stale)'
complete -c lotlink -n "__fish_lotlink_using_subcommand help; and not __fish_seen_subcommand_from run check-config send status dead space outbox shrink push fleet completions man demo help" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout'
complete -c lotlink -n "__fish_lotlink_using_subcommand help; and not __fish_seen_subcommand_from run check-config send status dead space outbox shrink push fleet completions man demo help" -f -a "man" -d 'Print the man page (roff) on stdout'
complete -c lotlink -n "__fish_lotlink_using_subcommand help; and not __fish_seen_subcommand_from run check-config send status dead space outbox shrink push fleet completions man demo help" -f -a "demo" -d 'Run the real pipeline against an in-process platform simulator and simulated lanes (builds with the `demo` feature only, the default for `cargo run`; not the .deb)'
complete -c lotlink -n "__fish_lotlink_using_subcommand help; and not __fish_seen_subcommand_from run check-config send status dead space outbox shrink push fleet completions man demo help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c lotlink -n "__fish_lotlink_using_subcommand help; and __fish_seen_subcommand_from dead" -f -a "list" -d 'List the dead letters (records the platform refused for good)'
complete -c lotlink -n "__fish_lotlink_using_subcommand help; and __fish_seen_subcommand_from dead" -f -a "retry" -d 'Put a dead letter (or `all`) back into the outbox for upload'
complete -c lotlink -n "__fish_lotlink_using_subcommand help; and __fish_seen_subcommand_from dead" -f -a "drop" -d 'Delete a dead letter for good'
complete -c lotlink -n "__fish_lotlink_using_subcommand help; and __fish_seen_subcommand_from space" -f -a "set" -d 'Re-base the occupied count (after counting the lot by hand)'
complete -c lotlink -n "__fish_lotlink_using_subcommand help; and __fish_seen_subcommand_from outbox" -f -a "aside" -d 'List what the outbox moved aside: sled index files it could not open, damaged log ranges, a whole store whose log could not be read. Reads only; never creates the store'
