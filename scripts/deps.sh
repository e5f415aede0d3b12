# SPDX-License-Identifier: Apache-2.0
# shellcheck shell=bash
# Installs the Debian 12 packages p11psk needs to build, demo and test. Sourced by
# demo.sh and test.sh; only calls apt-get when something is missing.
P11PSK_DEBS=(
    gcc clang make cmake pkg-config libc6-dev
    libssl-dev openssl libp11-kit-dev p11-kit check
    softhsm2 libsofthsm2
    gnutls-bin stunnel4 mosquitto mosquitto-clients
    iproute2 util-linux procps perl gdb p11-kit-modules systemd valgrind
    clang-format shellcheck
    opensc opensc-pkcs11 # pkcs11-spy.so counts C_Login in pin_lockout.sh
)

p11psk_sudo() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

p11psk_install_deps() {
    local missing=() p
    for p in "${P11PSK_DEBS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    echo "Installing: ${missing[*]}"
    p11psk_sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # Do not let package scripts start system-wide services (mosquitto, stunnel4) here.
    p11psk_sudo env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# p11psk_build DIR [cmake args...]: configure and build into DIR.
p11psk_build() {
    local dir=$1
    shift
    cmake -S "$P11PSK_ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
    cmake --build "$dir" -j "$(nproc)"
}
