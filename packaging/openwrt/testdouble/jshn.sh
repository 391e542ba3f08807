# Stand-in for /usr/share/libubox/jshn.sh: the same calls, the same output as
# `jshn -w` (json_object_to_json_string of json-c: `{ "k": "v", "a": [ 1 ] }`, every "/"
# written as "\/"). The text is built as the calls come; a name inside an array is
# ignored, as jshn does. Strings hold no newlines here (UCI values cannot).
# shellcheck shell=sh disable=SC3043

_jshn_escape() {
	printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's,/,\\/,g' -e 's/	/\\t/g'
}

# Separator before a member; the key unless the container is an array.
_jshn_member() {
	case "$_JSHN_FIRST" in
	*1) _JSHN_FIRST="${_JSHN_FIRST%?}0" && _JSHN="$_JSHN " ;;
	*) _JSHN="$_JSHN, " ;;
	esac
	case "$_JSHN_ARRAY" in
	*0) _JSHN="$_JSHN\"$(_jshn_escape "$1")\": " ;;
	esac
}

_jshn_open() {
	_jshn_member "$1"
	_JSHN="$_JSHN$2"
	_JSHN_FIRST="${_JSHN_FIRST}1"
	_JSHN_ARRAY="${_JSHN_ARRAY}$3"
}

_jshn_close() {
	_JSHN="$_JSHN $1"
	_JSHN_FIRST="${_JSHN_FIRST%?}"
	_JSHN_ARRAY="${_JSHN_ARRAY%?}"
}

json_init() {
	_JSHN="{"
	_JSHN_FIRST=1
	_JSHN_ARRAY=0
}

json_add_string() {
	_jshn_member "$1"
	_JSHN="$_JSHN\"$(_jshn_escape "$2")\""
}

json_add_int() {
	_jshn_member "$1"
	_JSHN="$_JSHN$(printf '%d' "$2" 2>/dev/null || echo 0)"
}

json_add_boolean() {
	_jshn_member "$1"
	case "$2" in 0 | '' | *[!0-9]*) _JSHN="${_JSHN}false" ;; *) _JSHN="${_JSHN}true" ;; esac
}

json_add_object() { _jshn_open "$1" "{" 0; }
json_close_object() { _jshn_close "}"; }
json_add_array() { _jshn_open "$1" "[" 1; }
json_close_array() { _jshn_close "]"; }

json_dump() {
	printf '%s }\n' "$_JSHN"
}
