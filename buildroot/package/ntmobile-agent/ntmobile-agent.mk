################################################################################
#
# ntmobile-agent
#
################################################################################

# A git site (not "local"): the cargo infrastructure vendors the crates
# into the downloaded tarball, so the build needs no network.
NTMOBILE_AGENT_VERSION = $(NTMOBILE_VERSION)
NTMOBILE_AGENT_SITE = $(NTMOBILE_SITE)
NTMOBILE_AGENT_SITE_METHOD = git
# Share the git clone with ntmobile-servers.
NTMOBILE_AGENT_DL_SUBDIR = ntmobile
NTMOBILE_AGENT_LICENSE = Apache-2.0 or MIT

# The workspace root is virtual, so "cargo install" has nothing to
# install: build the one binary and install it by hand.
NTMOBILE_AGENT_CARGO_BUILD_OPTS = -p ntm-agent --bin ntmd
NTMOBILE_AGENT_BIN_DIR = \
	$(@D)/target/$(RUSTC_TARGET_NAME)/$(if $(BR2_ENABLE_DEBUG),debug,release)

define NTMOBILE_AGENT_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(NTMOBILE_AGENT_BIN_DIR)/ntmd \
		$(TARGET_DIR)/usr/sbin/ntmd
	$(INSTALL) -d -m 0755 $(TARGET_DIR)/etc/ntmobile
endef

define NTMOBILE_AGENT_INSTALL_INIT_SYSV
	$(INSTALL) -D -m 0755 $(NTMOBILE_AGENT_PKGDIR)/S60ntmd \
		$(TARGET_DIR)/etc/init.d/S60ntmd
endef

# The agent's virtual addresses live on a TUN device.
define NTMOBILE_AGENT_LINUX_CONFIG_FIXUPS
	$(call KCONFIG_ENABLE_OPT,CONFIG_TUN)
endef

$(eval $(cargo-package))
