# Stand-in for /lib/functions/network.sh: the DNS servers netifd learnt on an interface
# are $NTM_TEST_DNS_<interface>; none set: the interface is down (status 1). The device of
# a network is $NTM_TEST_DEV_<network>; none set: no such network (status 1).
# shellcheck shell=sh
network_get_dnsserver() {
	eval "_ntm_dns=\${NTM_TEST_DNS_$2:-}"
	eval "$1=\$_ntm_dns"
	[ -n "$_ntm_dns" ]
}
network_get_device() {
	eval "_ntm_dev=\${NTM_TEST_DEV_$2:-}"
	eval "$1=\$_ntm_dev"
	[ -n "$_ntm_dev" ]
}
