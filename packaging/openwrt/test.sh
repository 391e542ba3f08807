#!/bin/sh
# shellcheck disable=SC2016 # the checks pass arguments to sh -c '...' on purpose
# Tests the OpenWrt package on this (Debian) machine:
# - build-ipk.sh makes an .ipk from the ntmd it is given (the host's target/release/ntmd,
#   and every static build found under target/static/<target>/ntmd): the outer format,
#   the file list, modes and owners, the control fields, conffiles, and scripts that
#   sh -n and shellcheck accept;
# - the init script runs under dash and under BusyBox ash against stand-ins for procd,
#   uci, jshn, netifd and dnsmasq (testdouble/: no procd can run here), and the JSON it
#   writes is what the real `ntmd check` accepts, with certificates `ntm-ca` issued;
# - the uci-defaults script makes the firewall zone once.
#
#   packaging/openwrt/test.sh   (NTM_BIN: the directory of ntmd and ntm-ca; default
#                                target/release)
#
# One line per check, then "N passed, M failed"; exits non-zero on a failure.
set -u

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN="${NTM_BIN:-$ROOT/target/release}"
PKG="$HERE/ntmobile"
DOUBLE="$HERE/testdouble"
passed=0
failed=0

ok() {
	passed=$((passed + 1))
	echo "ok    $*"
}
not_ok() {
	failed=$((failed + 1))
	echo "FAIL  $*"
}
# check WHAT COMMAND...: the command's success is the check.
check() {
	what="$1"
	shift
	if "$@"; then ok "$what"; else not_ok "$what"; fi
}
has_line() { # FILE LINE: FILE holds exactly this line
	grep -q -x -F -e "$2" "$1"
}

# What the checks use besides POSIX tools: python3 (reads the JSON), make (the Makefile),
# busybox (ash) and shellcheck; installed as root where missing, as scripts/test.sh does.
missing=""
for t in python3:python3 make:make busybox:busybox shellcheck:shellcheck; do
	command -v "${t%%:*}" >/dev/null 2>&1 || missing="$missing ${t#*:}"
done
if [ -n "$missing" ] && [ "$(id -u)" = 0 ]; then
	echo "installing:$missing" >&2
	# shellcheck disable=SC2086 # a list of package names
	"$ROOT/scripts/apt-install.sh" $missing >&2 || true
fi
for t in python3 make; do
	if ! command -v "$t" >/dev/null 2>&1; then
		echo "$t is missing (apt-get install $t)" >&2
		exit 1
	fi
done

for b in ntmd ntm-ca; do
	if [ ! -x "$BIN/$b" ]; then
		echo "no $BIN/$b: build first (cargo build --release --workspace --bins) or set NTM_BIN" >&2
		exit 1
	fi
done
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# --- the .ipk ---------------------------------------------------------------------------

# check_ipk IPK NTMD: the package holds NTMD and the feed package's files.
check_ipk() {
	ipk="$1"
	ntmd="$2"
	name="$(basename "$ipk")"
	x="$TMP/x.$name"
	mkdir -p "$x/outer" "$x/data" "$x/control"
	if ! tar -xzf "$ipk" -C "$x/outer" 2>/dev/null; then
		not_ok "$name: a gzip'd tar, as opkg takes it"
		return
	fi
	check "$name: the outer tar holds debian-binary, data.tar.gz, control.tar.gz, in this order" \
		test "$(tar -tzf "$ipk" | tr '\n' ' ')" = "./debian-binary ./data.tar.gz ./control.tar.gz "
	check "$name: debian-binary says 2.0" test "$(cat "$x/outer/debian-binary")" = 2.0
	tar -xzf "$x/outer/data.tar.gz" -C "$x/data"
	tar -xzf "$x/outer/control.tar.gz" -C "$x/control"

	# Mode, owner and path of every entry of data.tar.gz.
	tar -tvzf "$x/outer/data.tar.gz" | awk '{print $1, $2, $6}' | LC_ALL=C sort >"$x/list"
	cat >"$x/want" <<-'EOF'
		-rw------- 0/0 ./etc/config/ntmobile
		-rw-r--r-- 0/0 ./lib/upgrade/keep.d/ntmobile
		-rwxr-xr-x 0/0 ./etc/init.d/ntmobile
		-rwxr-xr-x 0/0 ./etc/uci-defaults/90-ntmobile
		-rwxr-xr-x 0/0 ./usr/sbin/ntmd
		drwxr-xr-x 0/0 ./
		drwxr-xr-x 0/0 ./etc/
		drwxr-xr-x 0/0 ./etc/config/
		drwxr-xr-x 0/0 ./etc/init.d/
		drwxr-xr-x 0/0 ./etc/uci-defaults/
		drwxr-xr-x 0/0 ./lib/
		drwxr-xr-x 0/0 ./lib/upgrade/
		drwxr-xr-x 0/0 ./lib/upgrade/keep.d/
		drwxr-xr-x 0/0 ./usr/
		drwxr-xr-x 0/0 ./usr/sbin/
	EOF
	LC_ALL=C sort -o "$x/want" "$x/want"
	if cmp -s "$x/list" "$x/want"; then
		ok "$name: data: the files, modes (key config 0600) and root ownership"
	else
		not_ok "$name: data: the files, modes and owners differ:"
		diff "$x/want" "$x/list" | sed 's/^/      /'
	fi
	check "$name: data: ntmd is the binary given" cmp -s "$ntmd" "$x/data/usr/sbin/ntmd"
	check "$name: data: the init script, config and uci-defaults are the feed package's" \
		sh -c 'cmp -s "$1/ntmobile.init" "$2/etc/init.d/ntmobile" &&
			cmp -s "$1/ntmobile.config" "$2/etc/config/ntmobile" &&
			cmp -s "$1/ntmobile.uci-defaults" "$2/etc/uci-defaults/90-ntmobile"' \
		sh "$PKG/files" "$x/data"
	check "$name: sysupgrade keeps /etc/ntmobile/ (keep.d)" \
		has_line "$x/data/lib/upgrade/keep.d/ntmobile" /etc/ntmobile/

	check "$name: control: the members" \
		test "$(tar -tzf "$x/outer/control.tar.gz" | LC_ALL=C sort | tr '\n' ' ')" = \
		"./ ./conffiles ./control ./postinst ./postinst-pkg ./prerm "
	c="$x/control/control"
	arch="${name%.ipk}"
	arch="${arch#ntmobile-agent_*_}"
	version="$(sed -n 's/^PKG_VERSION:=//p' "$PKG/Makefile")-r$(sed -n 's/^PKG_RELEASE:=//p' "$PKG/Makefile")"
	check "$name: control: package, version, architecture, depends" \
		sh -c 'grep -qx "Package: ntmobile-agent" "$1" && grep -qx "Version: $2" "$1" &&
			grep -qx "Architecture: $3" "$1" && grep -qx "Depends: kmod-tun" "$1" &&
			grep -qx "Section: net" "$1"' sh "$c" "$version" "$arch"
	size="$(gzip -dc "$x/outer/data.tar.gz" | wc -c | tr -d ' ')"
	check "$name: control: Installed-Size is the unpacked data ($size)" has_line "$c" "Installed-Size: $size"
	check "$name: control: a description with continuation lines" grep -q '^Description: .' "$c"
	check "$name: control: every line a field or a continuation" \
		test -z "$(grep -v -e '^[A-Z][A-Za-z-]*: ' -e '^ ' "$c")"
	check "$name: conffiles: /etc/config/ntmobile, a file the package carries" \
		test "$(cat "$x/control/conffiles")" = /etc/config/ntmobile
	for s in postinst prerm postinst-pkg; do
		check "$name: $s is executable and sh -n accepts it" \
			sh -c 'test -x "$1" && sh -n "$1" && { ! command -v busybox >/dev/null || busybox sh -n "$1"; }' \
			sh "$x/control/$s"
	done
	check "$name: postinst hands over to default_postinst, prerm to default_prerm" \
		sh -c 'grep -q "^default_postinst \"\$0\" \"\$@\"$" "$1/postinst" &&
			grep -q "^default_prerm \"\$0\" \"\$@\"$" "$1/prerm"' sh "$x/control"
	check "$name: postinst-pkg is the Makefile's, unescaped" \
		sh -c 'head -1 "$1" | grep -qx "#!/bin/sh" && grep -qF "[ -n \"\${IPKG_INSTROOT}\" ] && exit 0" "$1"' \
		sh "$x/control/postinst-pkg"
	if command -v shellcheck >/dev/null; then
		check "$name: shellcheck: postinst, prerm, postinst-pkg" \
			shellcheck -s sh -e SC1091 "$x/control/postinst" "$x/control/prerm" "$x/control/postinst-pkg"
	fi
	# The package's own postinst does nothing in an image build (the first boot does it).
	out="$(IPKG_INSTROOT="$TMP/nowhere" sh "$x/control/postinst-pkg" 2>&1)"
	check "$name: postinst-pkg in an image build: status 0, nothing done" \
		test "$?" = 0 -a -z "$out"
}

check "Makefile: PKG_VERSION is the workspace's version" test \
	"$(sed -n 's/^PKG_VERSION:=//p' "$PKG/Makefile")" = "$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -1)"
ipk="$(NTM_IPK_ALLOW_DYNAMIC=1 SOURCE_DATE_EPOCH=1700000000 "$HERE/build-ipk.sh" x86_64 "$BIN" "$TMP/out" 2>"$TMP/build.err")"
if [ -s "$ipk" ]; then
	ok "build-ipk.sh made $(basename "$ipk") from $BIN/ntmd"
	check_ipk "$ipk" "$BIN/ntmd"
	ipk2="$(NTM_IPK_ALLOW_DYNAMIC=1 SOURCE_DATE_EPOCH=1700000000 "$HERE/build-ipk.sh" x86_64 "$BIN" "$TMP/out2" 2>/dev/null)"
	check "build-ipk.sh: the same input makes the same bytes" cmp -s "$ipk" "$ipk2"
else
	not_ok "build-ipk.sh made a package: $(cat "$TMP/build.err")"
fi
out="$("$HERE/build-ipk.sh" x86_64 "$TMP/empty" "$TMP/out3" 2>&1)"
check "build-ipk.sh: no ntmd in BINARY_DIR: status 1, a clear message" \
	test "$?" = 1 -a "$out" = "$HERE/build-ipk.sh: no executable $TMP/empty/ntmd"
"$HERE/build-ipk.sh" x86_64 "$BIN" >/dev/null 2>&1
check "build-ipk.sh: a missing argument: usage, status 2" test "$?" = 2
if readelf -d "$BIN/ntmd" 2>/dev/null | grep -q NEEDED; then
	out="$("$HERE/build-ipk.sh" x86_64 "$BIN" "$TMP/out4" 2>&1)"
	check "build-ipk.sh: a dynamically linked ntmd is refused (status 1, says why)" \
		sh -c 'test "$1" = 1 && echo "$2" | grep -q "dynamically linked" && test ! -e "$3"' sh "$?" "$out" "$TMP/out4"
fi

# The static builds, where they were made (cross/ or the static build script):
# target triple -> an opkg architecture of a common board.
for pair in armv7-unknown-linux-musleabihf:arm_cortex-a7_neon-vfpv4 \
	mipsel-unknown-linux-musl:mipsel_24kc mips-unknown-linux-musl:mips_24kc \
	aarch64-unknown-linux-musl:aarch64_cortex-a53 x86_64-unknown-linux-musl:x86_64; do
	dir="$ROOT/target/static/${pair%%:*}"
	[ -x "$dir/ntmd" ] || continue
	p="$("$HERE/build-ipk.sh" "${pair#*:}" "$dir" "$TMP/static" 2>/dev/null)"
	if [ -s "$p" ]; then
		check_ipk "$p" "$dir/ntmd"
		echo "      ${pair%%:*}: ntmd $(wc -c <"$dir/ntmd") bytes, $(basename "$p") $(wc -c <"$p") bytes"
	else
		not_ok "build-ipk.sh made a package from $dir/ntmd"
	fi
done

# --- the feed Makefile, with stand-ins for OpenWrt's make includes ---------------------
# Its install recipe, run as the SDK would run it, puts the same files with the same
# modes as build-ipk.sh (which cannot check that the Makefile's recipe is right).
OW="$TMP/openwrt"
mkdir -p "$OW/include" "$OW/feeds/packages/lang/rust" "$TMP/pkg-install/bin"
cat >"$OW/rules.mk" <<'EOF'
INCLUDE_DIR:=$(TOPDIR)/include
INSTALL_DIR:=install -d -m0755
INSTALL_BIN:=install -m0755
INSTALL_DATA:=install -m0644
INSTALL_CONF:=install -m0600
EOF
cat >"$OW/include/package.mk" <<'EOF'
define BuildPackage
install-$(1):
	$$(call Package/$(1)/install,$$(DEST))
endef
EOF
echo 'RUST_ARCH_DEPENDS:=@(x86_64)' >"$OW/feeds/packages/lang/rust/rust-package.mk"
cp "$BIN/ntmd" "$TMP/pkg-install/bin/ntmd"
if make -s -C "$PKG" TOPDIR="$OW" PKG_INSTALL_DIR="$TMP/pkg-install" DEST="$TMP/mk" \
	install-ntmobile-agent >"$TMP/make.out" 2>&1; then
	ok "Makefile: Package/ntmobile-agent/install runs"
	files_of() { (cd "$1" && find . -type f -printf '%M %p\n' | LC_ALL=C sort); }
	from_make="$(files_of "$TMP/mk")"
	check "Makefile: the install recipe and build-ipk.sh install the same files, modes" \
		test "$(echo "$from_make" | wc -l)" = 5 -a "$from_make" = "$(files_of "$TMP/x.$(basename "$ipk")/data")"
else
	not_ok "Makefile: Package/ntmobile-agent/install runs: $(cat "$TMP/make.out")"
fi

# --- the init script, against the stand-ins ---------------------------------------------

# An identity the real ntmd check accepts.
"$BIN/ntm-ca" init --out "$TMP/ca" --name "OpenWrt test CA" >/dev/null 2>&1 &&
	"$BIN/ntm-ca" issue --ca "$TMP/ca" --role node --name box1.home.ntm.example.net \
		--out "$TMP/id" >/dev/null 2>&1
first() { # DIR PATTERN: the first file in DIR matching PATTERN
	find "$1" -maxdepth 1 -name "$2" 2>/dev/null | LC_ALL=C sort | head -1
}
CERT="$(first "$TMP/id" "*.pem")"
KEY="$(first "$TMP/id" "*.key")"
CA="$(first "$TMP/ca" "*.pem")"
check "ntm-ca issued a CA and a node certificate for the test" test -s "$CERT" -a -s "$KEY" -a -s "$CA"

# Does this ntmd know log_target (added with the syslog option)? If not, the test
# configuration leaves the option out, and says so.
cat >"$TMP/probe.json" <<EOF
{"account_server": "192.0.2.10:4443", "account_server_name": "as.example.net", "ca": "$CA",
 "credential": {"device": {"cert": "$CERT", "key": "$KEY"}}, "virtual_routes": ["198.18.0.0/15"],
 "dns": {"upstream": ["192.0.2.53:53"], "ntm_domains": ["ntm.example.net"]}, "log_target": "syslog"}
EOF
LOG_TARGET=syslog
if "$BIN/ntmd" check -c "$TMP/probe.json" 2>&1 | grep -q log_target; then
	LOG_TARGET=""
	echo "skip  this ntmd has no log_target option: the configuration's log_target is left out"
fi

# run_init SHELL ACTION: the init script under SHELL with the stand-ins; its stderr in $E.
run_init() {
	NTM_TEST_DIR="$DOUBLE" NTM_TEST_PATHS="$W/paths.sh" NTM_TEST_LOG="$W/log" \
		UCI_CONFIG_DIR="$W/config" UCI_STATE="$W/uci" PATH="$DOUBLE/bin:$PATH" \
		$1 "$DOUBLE/rc.common" "$PKG/files/ntmobile.init" "$2" 2>"$W/stderr"
}
# set_option NAME VALUE: in the test's /etc/config/ntmobile (VALUE "" removes it).
set_option() {
	sed -i "/^[[:space:]]*option $1 /d" "$W/config/ntmobile"
	[ -n "$2" ] && printf "\toption %s '%s'\n" "$1" "$2" >>"$W/config/ntmobile"
	return 0
}
# json_is PATH EXPECTED [WHAT]: a value of the generated JSON, read by python's json
# module and written back compactly, is EXPECTED.
json_is() {
	got="$(python3 -c 'import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    v = v[k]
print(json.dumps(v))' "$W/run/ntmobile.json" "$1" 2>&1)"
	check "$t ${3:-the JSON has $1 = $2} (got $got)" test "$got" = "$2"
}

for sh in dash "busybox sh"; do
	t="[${sh%% *}]"
	if ! command -v "${sh%% *}" >/dev/null; then
		echo "skip  $t: ${sh%% *} is not installed"
		continue
	fi
	W="$TMP/w-${sh%% *}"
	mkdir -p "$W/config" "$W/run"
	cp "$PKG/files/ntmobile.config" "$W/config/ntmobile"
	cat >"$W/paths.sh" <<-EOF
		PROG="$BIN/ntmd"
		JSON="$W/run/ntmobile.json"
		DNSMASQ_STATE="$W/run/ntmobile.dnsmasq"
		UPSTREAM_STATE="$W/run/ntmobile.upstream"
		UCI_SAVEDIR="$W/run/ntmobile.uci"
		DNSMASQ_INIT="$DOUBLE/dnsmasq.init"
		JSHN="$DOUBLE/jshn.sh"
		NETWORK_SH="$DOUBLE/network.sh"
	EOF
	: >"$W/log"

	# As installed: enabled 0.
	run_init "$sh" start
	rc=$?
	check "$t enabled 0: start succeeds and starts nothing" \
		sh -c 'test "$1" = 0 && ! grep -q "^open_instance" "$2" && ! grep -q "^uci " "$2" && test ! -e "$3"' \
		sh "$rc" "$W/log" "$W/run/ntmobile.json"
	check "$t enabled 0: says how to enable it" grep -q "uci set ntmobile.agent.enabled=1" "$W/stderr"

	# Enabled, with an identity and a resolver.
	set_option enabled 1
	set_option ca "$CA"
	set_option cert "$CERT"
	set_option key "$KEY"
	set_option log_target "$LOG_TARGET"
	printf "\tlist dns_upstream '192.0.2.53:53'\n" >>"$W/config/ntmobile"
	: >"$W/log"
	run_init "$sh" start
	rc=$?
	check "$t start: status 0 ($(cat "$W/stderr"))" test "$rc" = 0
	"$BIN/ntmd" check -c "$W/run/ntmobile.json" >"$W/check.out" 2>&1
	check "$t the JSON written is accepted by ntmd check ($(cat "$W/check.out"))" test $? = 0
	check "$t the JSON is jshn's: slashes escaped as \\/" grep -qF '"ca": "\/' "$W/run/ntmobile.json"
	json_is tun '{"name": "ntm0", "mtu": 1420}'
	json_is virtual_routes '["198.18.0.0/15", "2001:db8:ffff::/48"]'
	json_is dns.listen '"127.0.0.1:5354"'
	json_is dns.upstream '["192.0.2.53:53"]'
	json_is dns.ntm_domains '["ntm.example.net"]'
	json_is credential.device.key "\"$KEY\""
	json_is public_key_mode false
	json_is status_socket '"/var/run/ntmd.sock"'
	[ -n "$LOG_TARGET" ] && json_is log_target '"syslog"'
	check "$t procd: one instance, ntmd in the foreground with the JSON" sh -c '
		test "$(grep -c "^open_instance" "$1")" = 1 && test "$(grep -c "^close_instance" "$1")" = 1 &&
		grep -qxF "set_param command $2 run -c $3" "$1"' sh "$W/log" "$BIN/ntmd" "$W/run/ntmobile.json"
	check "$t procd: respawn for ever, 5 s apart" has_line "$W/log" "set_param respawn 3600 5 0"
	check "$t procd: stderr to logd" has_line "$W/log" "set_param stderr 1"
	check "$t procd: a changed JSON or identity file restarts ntmd on reload" sh -c '
		grep -qxF "set_param file $2 $3" "$1" && grep -qxF "append_param file $4 $5" "$1"' \
		sh "$W/log" "$W/run/ntmobile.json" "$CA" "$CERT" "$KEY"
	check "$t triggers: reload on a change of /etc/config/ntmobile" has_line "$W/log" "reload_trigger ntmobile"
	check "$t triggers: reload on events of wan and wan6" sh -c '
		grep -qxF "interface_trigger interface.* wan /etc/init.d/ntmobile reload" "$1" &&
		grep -qxF "interface_trigger interface.* wan6 /etc/init.d/ntmobile reload" "$1"' sh "$W/log"
	check "$t dnsmasq: the NTM domain forwarded to the stub, rebind allowed, dnsmasq reloaded" sh -c '
		grep -qxF "dhcp.@dnsmasq[0].server=/ntm.example.net/127.0.0.1#5354" "$1" &&
		grep -qxF "dhcp.@dnsmasq[0].rebind_domain=ntm.example.net" "$1" &&
		grep -qxF "uci commit dhcp" "$2" && test "$(grep -c "^dnsmasq reload" "$2")" = 1' \
		sh "$W/uci" "$W/log"
	check "$t dnsmasq: every uci call with a change directory of its own (not staged changes)" sh -c '
		test "$(grep -c "^uci savedir" "$1")" = "$(grep -c -E "^uci (add_list|del_list|set|delete|commit) " "$1")" &&
		! grep "^uci savedir" "$1" | grep -v -q -F " $2"' sh "$W/log" "$W/run/ntmobile.uci"

	# A reload that changes nothing leaves dnsmasq alone (interface events reload often).
	: >"$W/log"
	cp "$W/run/ntmobile.json" "$W/before.json"
	run_init "$sh" reload
	check "$t reload, nothing changed: the same JSON, dnsmasq not touched" sh -c '
		cmp -s "$1" "$2" && ! grep -q -e "^dnsmasq" -e "^uci " "$3"' \
		sh "$W/before.json" "$W/run/ntmobile.json" "$W/log"

	# Another domain: the old entry goes, the new one comes.
	sed -i "s/list ntm_domain 'ntm.example.net'/list ntm_domain 'ntm.example.org'/" "$W/config/ntmobile"
	: >"$W/log"
	run_init "$sh" reload
	check "$t reload, another domain: dnsmasq forwards only the new one" sh -c '
		grep -qxF "dhcp.@dnsmasq[0].server=/ntm.example.org/127.0.0.1#5354" "$1" &&
		! grep -q "ntm.example.net" "$1" && test "$(grep -c "^dnsmasq reload" "$2")" = 1' \
		sh "$W/uci" "$W/log"

	# A user to run as once started: handed to ntmd, which checks it.
	set_option user nobody
	run_init "$sh" reload
	json_is user '"nobody"'
	set_option user ""
	run_init "$sh" reload
	check "$t no user option: no user in the JSON" sh -c '! grep -q "\"user\"" "$1"' sh "$W/run/ntmobile.json"

	# Subnet routes: an announced prefix gives a lan section on the device of the network
	# 'lan', the agent's own masquerade, DNS and filter off (fw4 and dnsmasq do them here).
	printf "\tlist lan_announce '192.168.7.0/24'\n" >>"$W/config/ntmobile"
	NTM_TEST_DEV_lan=br-lan run_init "$sh" reload
	json_is lan '{"interfaces": ["br-lan"], "masquerade": false, "announce": ["192.168.7.0/24"], "dns": false, "firewall": false}'
	"$BIN/ntmd" check -c "$W/run/ntmobile.json" >"$W/check.out" 2>&1
	check "$t ... a JSON ntmd check accepts ($(cat "$W/check.out"))" test $? = 0
	printf "\tlist lan_interface 'eth9'\n\toption lan_masquerade '1'\n" >>"$W/config/ntmobile"
	NTM_TEST_DEV_lan=br-lan run_init "$sh" reload
	json_is lan '{"interfaces": ["eth9"], "masquerade": true, "announce": ["192.168.7.0/24"], "dns": false, "firewall": false}' \
		"the JSON's lan has a device name given as it is, and masquerade asked for"
	sed -i -e "/lan_announce/d" -e "/lan_interface/d" "$W/config/ntmobile"
	set_option lan_masquerade ""
	run_init "$sh" reload
	check "$t no lan option: no lan in the JSON" sh -c '! grep -q "\"lan\"" "$1"' sh "$W/run/ntmobile.json"

	# Stop: dnsmasq forgets the domains.
	: >"$W/log"
	run_init "$sh" stop
	check "$t stop: the dnsmasq entries removed, dnsmasq reloaded, ntmd killed" sh -c '
		! grep -q "dnsmasq" "$1" && test ! -e "$2" && grep -q "^dnsmasq reload" "$3" &&
		grep -q "^kill ntmobile" "$3"' sh "$W/uci" "$W/run/ntmobile.dnsmasq" "$W/log"

	# The resolvers netifd learnt, when none are configured.
	sed -i "/list dns_upstream/d" "$W/config/ntmobile"
	: >"$W/log"
	NTM_TEST_DNS_wan="" NTM_TEST_DNS_wan6="" run_init "$sh" start
	rc=$?
	check "$t no resolver yet: status 0, no instance, waits for an interface" sh -c '
		test "$1" = 0 && ! grep -q "^open_instance" "$2" && grep -q "waiting for an interface" "$3" &&
		grep -q "interface_trigger interface.\* wan " "$2"' sh "$rc" "$W/log" "$W/stderr"
	: >"$W/log"
	NTM_TEST_DNS_wan="192.0.2.53 198.51.100.53" NTM_TEST_DNS_wan6="2001:db8::53 fe80::1 192.0.2.53" \
		run_init "$sh" reload
	json_is dns.upstream '["192.0.2.53:53", "198.51.100.53:53", "[2001:db8::53]:53"]' \
		"the interfaces' resolvers: both families, no link-local, no repeat"
	check "$t ... and the agent starts" grep -q "^open_instance" "$W/log"
	"$BIN/ntmd" check -c "$W/run/ntmobile.json" >/dev/null 2>&1
	check "$t ... with a JSON ntmd check accepts" test $? = 0
	cp "$W/run/ntmobile.json" "$W/before.json"
	: >"$W/log"
	NTM_TEST_DNS_wan="" NTM_TEST_DNS_wan6="" run_init "$sh" reload
	check "$t every interface down for a moment: the agent stays, with the last resolvers" sh -c '
		grep -q "^open_instance" "$1" && cmp -s "$2" "$3"' sh "$W/log" "$W/before.json" "$W/run/ntmobile.json"
	: >"$W/log"
	NTM_TEST_DNS_wan="203.0.113.53" run_init "$sh" reload
	json_is dns.upstream '["203.0.113.53:53"]' "another network's resolver replaces them"
	rm -f "$W/run/ntmobile.upstream"

	# A configuration ntmd refuses is not handed to procd (it would respawn for ever).
	set_option key "$TMP/missing.key"
	: >"$W/log"
	NTM_TEST_DNS_wan="192.0.2.53" run_init "$sh" start
	rc=$?
	check "$t a missing key: start fails, no instance, ntmd's reason logged" sh -c '
		test "$1" != 0 && ! grep -q "^open_instance" "$2" && grep -q "^logger ntmobile: not started: .*missing.key" "$2"' \
		sh "$rc" "$W/log"
	set_option key "$KEY"
	set_option udp_port 45x0
	: >"$W/log"
	NTM_TEST_DNS_wan="192.0.2.53" run_init "$sh" start
	rc=$?
	check "$t a port that is not a number: start fails, named" sh -c '
		test "$1" != 0 && ! grep -q "^open_instance" "$2" && grep -q "udp_port is not a number" "$3"' \
		sh "$rc" "$W/log" "$W/stderr"
	set_option udp_port 4500
	set_option credential password
	set_option email "box@example.net"
	set_option password_file "$TMP/password"
	echo secret >"$TMP/password"
	: >"$W/log"
	NTM_TEST_DNS_wan="192.0.2.53" run_init "$sh" start
	json_is credential "{\"password\": {\"email\": \"box@example.net\", \"password_file\": \"$TMP/password\"}}" \
		"password login: the e-mail and the password file"
	check "$t password login: procd watches the password file, no device files" \
		has_line "$W/log" "append_param file $TMP/password"
	"$BIN/ntmd" check -c "$W/run/ntmobile.json" >"$W/check.out" 2>&1
	check "$t ... which ntmd check accepts ($(cat "$W/check.out"))" test $? = 0
	run_init "$sh" stop

	# The firewall zone, made once.
	: >"$W/log"
	printf 'ntmobile.agent.tun_name=ntm9\nntmobile.agent.udp_port=4501\n' >"$W/uci"
	NTM_TEST_LOG="$W/log" UCI_STATE="$W/uci" PATH="$DOUBLE/bin:$PATH" $sh "$PKG/files/ntmobile.uci-defaults"
	rc=$?
	check "$t uci-defaults: zone ntm with the TUN device, masqueraded, LAN may forward into it" sh -c '
		test "$1" = 0 && grep -qx "firewall.ntm=zone" "$2" && grep -qx "firewall.ntm.device=ntm9" "$2" &&
		grep -qx "firewall.ntm.input=REJECT" "$2" && grep -qx "firewall.ntm.masq=1" "$2" &&
		grep -qx "firewall.ntm_lan=forwarding" "$2" && grep -qx "firewall.ntm_lan.src=lan" "$2" &&
		grep -qx "firewall.ntm_lan.dest=ntm" "$2" && grep -qx "uci commit firewall" "$3"' \
		sh "$rc" "$W/uci" "$W/log"
	check "$t uci-defaults: the tunnel port open on wan" sh -c '
		grep -qx "firewall.ntm_tunnel.src=wan" "$1" && grep -qx "firewall.ntm_tunnel.dest_port=4501" "$1" &&
		grep -qx "firewall.ntm_tunnel.proto=udp" "$1" && grep -qx "firewall.ntm_tunnel.target=ACCEPT" "$1"' sh "$W/uci"
	: >"$W/log"
	NTM_TEST_LOG="$W/log" UCI_STATE="$W/uci" PATH="$DOUBLE/bin:$PATH" $sh "$PKG/files/ntmobile.uci-defaults"
	check "$t uci-defaults: a second run changes nothing" test $? = 0 -a ! -s "$W/log"
done

if command -v shellcheck >/dev/null; then
	check "shellcheck: the init script, uci-defaults, build-ipk.sh, this test, the stand-ins" \
		shellcheck -s sh -e SC1091 "$PKG/files/ntmobile.init" "$PKG/files/ntmobile.uci-defaults" \
		"$HERE/build-ipk.sh" "$HERE/test.sh" "$DOUBLE/rc.common" "$DOUBLE/functions.sh" \
		"$DOUBLE/procd.sh" "$DOUBLE/jshn.sh" "$DOUBLE/network.sh" "$DOUBLE/bin/uci" \
		"$DOUBLE/bin/logger" "$DOUBLE/dnsmasq.init"
else
	echo "skip  shellcheck is not installed"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
