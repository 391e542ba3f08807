# Stand-in for OpenWrt's /lib/functions.sh: the config_* functions the init script uses,
# over a UCI file in $UCI_CONFIG_DIR. Enough of the UCI syntax for the test's files: one
# statement a line, values in single or double quotes or bare, no trailing comments.
# As in OpenWrt, an option is CONFIG_<section>_<option>, and a list also has _LENGTH and
# _ITEM<n>.
# shellcheck shell=sh disable=SC2034,SC3043

_uci_unquote() {
	case "$1" in
	\'*\') _v="${1#\'}" && _v="${_v%\'}" ;;
	\"*\") _v="${1#\"}" && _v="${_v%\"}" ;;
	*) _v="$1" ;;
	esac
}

config_load() {
	local file="${UCI_CONFIG_DIR:-/etc/config}/$1" line kw rest key sec="" n=0 len
	[ -f "$file" ] || return 1
	while IFS= read -r line || [ -n "$line" ]; do
		line="${line#"${line%%[! 	]*}"}"
		case "$line" in '' | '#'*) continue ;; esac
		kw="${line%%[ 	]*}"
		rest="${line#"$kw"}"
		rest="${rest#"${rest%%[! 	]*}"}"
		key="${rest%%[ 	]*}"
		rest="${rest#"$key"}"
		rest="${rest#"${rest%%[! 	]*}"}"
		case "$kw" in
		config)
			n=$((n + 1))
			_uci_unquote "$rest"
			sec="${_v:-cfg$n}"
			eval "CONFIG_${sec}_TYPE=\$key"
			CONFIG_SECTIONS="${CONFIG_SECTIONS:+$CONFIG_SECTIONS }$sec"
			;;
		option)
			_uci_unquote "$rest"
			eval "CONFIG_${sec}_${key}=\$_v"
			;;
		list)
			_uci_unquote "$rest"
			eval "len=\${CONFIG_${sec}_${key}_LENGTH:-0}"
			len=$((len + 1))
			eval "CONFIG_${sec}_${key}_LENGTH=\$len"
			eval "CONFIG_${sec}_${key}_ITEM$len=\$_v"
			eval "CONFIG_${sec}_${key}=\"\${CONFIG_${sec}_${key}:+\$CONFIG_${sec}_${key} }\$_v\""
			;;
		esac
	done <"$file"
}

# config_get VAR SECTION OPTION [DEFAULT]: an empty option gives the default, as in OpenWrt.
config_get() {
	eval "$1=\${CONFIG_${2}_${3}:-\${4:-}}"
}

config_get_bool() {
	local _b
	eval "_b=\${CONFIG_${2}_${3}:-}"
	case "$_b" in
	1 | on | true | yes | enabled) _b=1 ;;
	0 | off | false | no | disabled) _b=0 ;;
	*) _b="${4:-0}" ;;
	esac
	eval "$1=\$_b"
}

config_list_foreach() {
	local section="$1" option="$2" function="$3" len c=1 val
	shift 3
	eval "len=\${CONFIG_${section}_${option}_LENGTH:-0}"
	while [ "$c" -le "$len" ]; do
		eval "val=\${CONFIG_${section}_${option}_ITEM$c}"
		"$function" "$val" "$@"
		c=$((c + 1))
	done
}
