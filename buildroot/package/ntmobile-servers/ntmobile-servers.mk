################################################################################
#
# ntmobile-servers
#
################################################################################

# A git site (not "local"): the cargo infrastructure vendors the crates
# into the downloaded tarball, so the build needs no network.
NTMOBILE_SERVERS_VERSION = $(NTMOBILE_VERSION)
NTMOBILE_SERVERS_SITE = $(NTMOBILE_SITE)
NTMOBILE_SERVERS_SITE_METHOD = git
# Share the git clone with ntmobile-agent.
NTMOBILE_SERVERS_DL_SUBDIR = ntmobile
NTMOBILE_SERVERS_LICENSE = Apache-2.0 or MIT

ifeq ($(BR2_PACKAGE_NTMOBILE_SERVERS_RS),y)
NTMOBILE_SERVERS_BINS += ntm-rs
NTMOBILE_SERVERS_INIT_SCRIPTS += S50ntm-rs
endif
ifeq ($(BR2_PACKAGE_NTMOBILE_SERVERS_NS),y)
NTMOBILE_SERVERS_BINS += ntm-ns
NTMOBILE_SERVERS_INIT_SCRIPTS += S51ntm-ns
endif
ifeq ($(BR2_PACKAGE_NTMOBILE_SERVERS_DC),y)
NTMOBILE_SERVERS_BINS += ntm-dc
NTMOBILE_SERVERS_INIT_SCRIPTS += S52ntm-dc
endif
ifeq ($(BR2_PACKAGE_NTMOBILE_SERVERS_AS),y)
NTMOBILE_SERVERS_BINS += ntm-as
NTMOBILE_SERVERS_INIT_SCRIPTS += S53ntm-as
endif

ifeq ($(BR2_PACKAGE_NTMOBILE_SERVERS)$(BR_BUILDING),yy)
ifeq ($(NTMOBILE_SERVERS_BINS),)
$(error ntmobile-servers: choose at least one of ntm-as, ntm-dc, ntm-rs, ntm-ns)
endif
endif

# The workspace root is virtual, so "cargo install" has nothing to
# install: build the chosen binaries and install them by hand.
NTMOBILE_SERVERS_CARGO_BUILD_OPTS = \
	-p ntm-servers $(addprefix --bin ,$(NTMOBILE_SERVERS_BINS))
NTMOBILE_SERVERS_BIN_DIR = \
	$(@D)/target/$(RUSTC_TARGET_NAME)/$(if $(BR2_ENABLE_DEBUG),debug,release)

# /var/lib/ntmobile holds the DC's and the AS's databases (node keys,
# accounts): root only.
define NTMOBILE_SERVERS_INSTALL_TARGET_CMDS
	for b in $(NTMOBILE_SERVERS_BINS); do \
		$(INSTALL) -D -m 0755 $(NTMOBILE_SERVERS_BIN_DIR)/$$b \
			$(TARGET_DIR)/usr/sbin/$$b || exit 1; \
	done
	$(INSTALL) -d -m 0755 $(TARGET_DIR)/etc/ntmobile
	$(INSTALL) -d -m 0700 $(TARGET_DIR)/var/lib/ntmobile
endef

define NTMOBILE_SERVERS_INSTALL_INIT_SYSV
	for s in $(NTMOBILE_SERVERS_INIT_SCRIPTS); do \
		$(INSTALL) -D -m 0755 $(NTMOBILE_SERVERS_PKGDIR)/$$s \
			$(TARGET_DIR)/etc/init.d/$$s || exit 1; \
	done
endef

$(eval $(cargo-package))
