#!/usr/bin/env bash
# Cross-architecture and cross-OS checks (make cross):
#  1. every architecture snapctl's users run builds the binary and passes
#     go vet (with the e2e tag too) with CGO_ENABLED=0; the tests' ABI size
#     assertions are compile-time, so vet checks them on each architecture;
#  2. the pure packages (no kernel calls) build and vet on a non-Linux GOOS
#     behind internal/platform;
#  3. the ABI tests and the pure unit tests run on the two 32-bit
#     architectures, 386 and arm (GOARM=7), and the ABI tests on arm64,
#     riscv64 and ppc64le, under qemu user-mode emulation (qemu-user,
#     installed by scripts/deps.sh): a host kernel without IA32 emulation
#     cannot run 386 binaries itself. Go's 386 runtime crashes under
#     qemu-i386 7.2 when it preempts goroutines with signals
#     ("bad g in signal handler"), hence asyncpreemptoff there.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
export CGO_ENABLED=0 GOFLAGS=${GOFLAGS:-}

ARCHES=(amd64 arm64 arm 386 riscv64 ppc64le)
PURE=(./cowsize ./dmtable ./merge ./bow ./bow/nbd ./fiemap ./freespace ./internal/platform)

step() { printf '== %s\n' "$*"; }

for arch in "${ARCHES[@]}"; do
	step "linux/$arch: build, vet"
	GOOS=linux GOARCH=$arch GOARM=7 $GO build -trimpath -o /dev/null ./cmd/snapctl
	GOOS=linux GOARCH=$arch GOARM=7 $GO vet -tags e2e ./...
done

step "darwin/arm64: vet and build the pure packages"
GOOS=darwin GOARCH=arm64 $GO vet "${PURE[@]}"
GOOS=darwin GOARCH=arm64 $GO build "${PURE[@]}"

qemu() {
	command -v "qemu-$1" >/dev/null || { echo "cross: qemu-$1 missing: run scripts/deps.sh (qemu-user)" >&2; exit 1; }
	command -v "qemu-$1"
}

# Pure tests that run in seconds under emulation: the store format reader,
# the bow log and restore, the COW size formula, table and status parsing,
# NBD framing. The fuzz targets run their seed corpus.
PURE_RUN='^(TestABISizes|TestIoctlNumbers|TestIoctlEncoding|TestLogGolden|TestChecksum|TestParseLogBlockErrors|TestEncodeErrors|FuzzLog|TestRestoreHandImage|TestRestoreRefusesCorruptChain|TestRestoreRollForward|TestRangeMap|TestTransitions|TestBlockZero|TestUnaligned|TestLayoutMatchesKernelAllocation|TestMinChunks|TestReadStore.*|TestForChunks.*|TestCapacity.*|TestParseRanges.*|TestDiff|Test.*Table.*|Test.*Status.*|TestEncodeTargets|TestDecode.*|TestRequest.*|TestParseRequestBad|FuzzServe|TestExtent.*|TestFlagValidation|TestAlign.*|TestDevEncoding|TestFreeExtents|TestChunks|TestReadMap|TestSeedObjectsMatchKernel|TestPlanSeeds|TestCowPieces|TestWriteSeeded.*|TestOfflineSkipsSeeds|TestSeeded.*)$'
step "linux/arm (GOARM=7) under qemu-arm: ABI and pure tests"
GOOS=linux GOARCH=arm GOARM=7 $GO test -count=1 -exec "$(qemu arm)" -run "$PURE_RUN" "${PURE[@]}"
step "linux/386 under qemu-i386: ABI and pure tests"
GODEBUG=asyncpreemptoff=1 GOOS=linux GOARCH=386 $GO test -count=1 -exec "$(qemu i386)" -run "$PURE_RUN" "${PURE[@]}"

for pair in arm64:aarch64 riscv64:riscv64 ppc64le:ppc64le; do
	arch=${pair%%:*}
	step "linux/$arch under qemu-${pair##*:}: ABI tests"
	GOOS=linux GOARCH=$arch $GO test -count=1 -exec "$(qemu "${pair##*:}")" -run '^(TestABISizes|TestIoctlNumbers|TestIoctlEncoding)$' ./dmtable ./fiemap ./freespace ./bow/nbd ./internal/platform
done
