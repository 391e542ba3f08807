################################################################################
#
# ntmobile
#
################################################################################

# The commit of the release source (BR2_PACKAGE_NTMOBILE_SOURCE_GIT); its
# vendored tarball's hash is in ntmobile.hash. To move it, see
# "Moving the pinned commit" in buildroot/README.md.
NTMOBILE_GIT_VERSION = 4557719e4d73ad89e2ba2d7b2cde96dca7b1d0c3

ifeq ($(BR2_PACKAGE_NTMOBILE_SOURCE_GIT),y)
NTMOBILE_VERSION = $(NTMOBILE_GIT_VERSION)
NTMOBILE_SITE = $(call qstrip,$(BR2_PACKAGE_NTMOBILE_GIT_URL))
NTMOBILE_SITE_METHOD = git
else
NTMOBILE_VERSION = local
NTMOBILE_SITE = $(abspath $(BR2_EXTERNAL_NTMOBILE_PATH)/..)
NTMOBILE_SITE_METHOD = local
# The checkout's own build output is no source.
NTMOBILE_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = --exclude=/target
endif

NTMOBILE_LICENSE = Apache-2.0 or MIT
NTMOBILE_LICENSE_FILES = LICENSE-APACHE LICENSE-MIT

ifeq ($(BR2_PACKAGE_NTMOBILE_AGENT),y)
NTMOBILE_CARGO_PACKAGES += ntm-agent
NTMOBILE_BINS += ntmd
NTMOBILE_INIT_SCRIPTS += S60ntmd
endif
ifeq ($(BR2_PACKAGE_NTMOBILE_RS),y)
NTMOBILE_BINS += ntm-rs
NTMOBILE_SERVER_FEATURES += rs
NTMOBILE_INIT_SCRIPTS += S50ntm-rs
endif
ifeq ($(BR2_PACKAGE_NTMOBILE_NS),y)
NTMOBILE_BINS += ntm-ns
NTMOBILE_SERVER_FEATURES += ns
NTMOBILE_INIT_SCRIPTS += S51ntm-ns
endif
ifeq ($(BR2_PACKAGE_NTMOBILE_DC),y)
NTMOBILE_BINS += ntm-dc
NTMOBILE_SERVER_FEATURES += dc
NTMOBILE_INIT_SCRIPTS += S52ntm-dc
endif
ifeq ($(BR2_PACKAGE_NTMOBILE_AS),y)
NTMOBILE_BINS += ntm-as
NTMOBILE_SERVER_FEATURES += as
NTMOBILE_INIT_SCRIPTS += S53ntm-as
endif
ifneq ($(filter ntm-%,$(NTMOBILE_BINS)),)
NTMOBILE_CARGO_PACKAGES += ntm-servers
endif

ifeq ($(BR2_PACKAGE_NTMOBILE)$(BR_BUILDING),yy)
ifeq ($(NTMOBILE_BINS),)
$(error ntmobile: choose at least one of ntmd, ntm-as, ntm-dc, ntm-rs, ntm-ns)
endif
endif

# A local tree is copied, not downloaded, so Buildroot's download step,
# which vendors the crates of cargo packages (cargo-post-process), does
# not run for it: vendor them here the same way. --offline first, so that
# a rebuild needs no network once the crates are in Buildroot's cargo
# home.
define NTMOBILE_VENDOR_LOCAL_CRATES
	mkdir -p $(BR_CARGO_HOME) $(@D)/.cargo
	cd $(@D) && \
	$(TARGET_MAKE_ENV) $(PKG_COMMON_CARGO_ENV) \
		flock $(BR_CARGO_HOME)/.br-lock \
		sh -c 'cargo vendor --offline --locked VENDOR 2>/dev/null || \
			cargo vendor --locked VENDOR' >$(@D)/.cargo/config.toml
endef
ifeq ($(NTMOBILE_SITE_METHOD),local)
NTMOBILE_PRE_CONFIGURE_HOOKS += NTMOBILE_VENDOR_LOCAL_CRATES
endif

# pkg-cargo.mk's PKG_CARGO_ENV sets the opt-level, LTO and codegen units
# of every Rust package from BR2_OPTIMIZE_* and BR2_ENABLE_LTO, over the
# workspace's release profile. NTMOBILE_CARGO_ENV follows it on cargo's
# command line, so these win. panic = "abort" and the per-crate opt-level
# of the cipher crates come from Cargo.toml, which Buildroot leaves alone.
ifeq ($(BR2_PACKAGE_NTMOBILE_SIZE_PROFILE),y)
NTMOBILE_CARGO_ENV = \
	CARGO_PROFILE_RELEASE_OPT_LEVEL=z \
	CARGO_PROFILE_RELEASE_LTO=true \
	CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
# pkg-cargo.mk sets this variable for ARM: keep its flag, add Thumb-2.
ifeq ($(BR2_ARM_INSTRUCTIONS_THUMB2),y)
NTMOBILE_CARGO_ENV += \
	CARGO_TARGET_$(call UPPERCASE,$(RUSTC_TARGET_NAME))_RUSTFLAGS="-Clink-arg=-Wl,--allow-multiple-definition -Ctarget-feature=+thumb-mode"
endif
endif

# Each server binary needs only its own feature of ntm-servers
# (docs/servers.md), so an image with the relay alone compiles neither
# SQLite nor the certificate generator. The pinned commit predates the
# features: it builds with its defaults.
ifeq ($(NTMOBILE_SITE_METHOD),local)
ifneq ($(NTMOBILE_SERVER_FEATURES),)
NTMOBILE_FEATURE_OPTS = --no-default-features --features \
	$(subst $(space),$(comma),$(addprefix ntm-servers/,$(strip $(NTMOBILE_SERVER_FEATURES))))
endif
endif

# The workspace root is virtual, so "cargo install" has nothing to
# install: build the chosen binaries and install them by hand.
NTMOBILE_CARGO_BUILD_OPTS = \
	$(addprefix -p ,$(NTMOBILE_CARGO_PACKAGES)) \
	$(addprefix --bin ,$(NTMOBILE_BINS)) \
	$(NTMOBILE_FEATURE_OPTS)
NTMOBILE_BIN_DIR = \
	$(@D)/target/$(RUSTC_TARGET_NAME)/$(if $(BR2_ENABLE_DEBUG),debug,release)

# /var/lib/ntmobile holds the DC's and the AS's databases (node keys,
# accounts): root only.
define NTMOBILE_INSTALL_TARGET_CMDS
	$(foreach b,$(NTMOBILE_BINS),\
		$(INSTALL) -D -m 0755 $(NTMOBILE_BIN_DIR)/$(b) \
			$(TARGET_DIR)/usr/sbin/$(b)$(sep))
	$(INSTALL) -d -m 0755 $(TARGET_DIR)/etc/ntmobile
	$(if $(filter ntm-%,$(NTMOBILE_BINS)),\
		$(INSTALL) -d -m 0700 $(TARGET_DIR)/var/lib/ntmobile)
endef

define NTMOBILE_INSTALL_INIT_SYSV
	$(foreach s,$(NTMOBILE_INIT_SCRIPTS),\
		$(INSTALL) -D -m 0755 $(NTMOBILE_PKGDIR)/$(s) \
			$(TARGET_DIR)/etc/init.d/$(s)$(sep))
endef

# ntmd puts the box's virtual addresses on a TUN device.
ifeq ($(BR2_PACKAGE_NTMOBILE_AGENT),y)
define NTMOBILE_LINUX_CONFIG_FIXUPS
	$(call KCONFIG_ENABLE_OPT,CONFIG_TUN)
endef
endif

$(eval $(cargo-package))
