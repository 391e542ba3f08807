# Stand-in for /lib/functions/procd.sh: every call is one line in $NTM_TEST_LOG.
# shellcheck shell=sh
_procd_log() {
	echo "$*" >>"$NTM_TEST_LOG"
}
procd_open_service() { _procd_log "open_service $*"; }
procd_close_service() { _procd_log "close_service"; }
procd_open_instance() { _procd_log "open_instance $*"; }
procd_close_instance() { _procd_log "close_instance"; }
procd_set_param() { _procd_log "set_param $*"; }
procd_append_param() { _procd_log "append_param $*"; }
procd_open_trigger() { _procd_log "open_trigger"; }
procd_close_trigger() { _procd_log "close_trigger"; }
procd_add_reload_trigger() { _procd_log "reload_trigger $*"; }
procd_add_interface_trigger() { _procd_log "interface_trigger $*"; }
procd_kill() { _procd_log "kill $*"; }
