//! Which CPU kernels run: chosen once at run time, so one portable binary
//! (built for the baseline target, no `target-cpu=native`) still runs the
//! AVX-512 code on the machines that have it.
//!
//! Levels: `avx512` (AVX-512 F/BW/VL/DQ with FMA: padv's GEMM micro-kernel
//! and 512-bit element-wise loops), `avx2` (AVX2 + FMA: 256-bit loops, the
//! `gemm` crate's kernels for the products) and `portable` (the baseline
//! target: SSE2 on x86-64, NEON on aarch64). `PADV_CPU_KERNELS=portable|avx2|
//! avx512|auto` forces one (CI runs the parity tests under `portable`);
//! asking for a level this CPU lacks is an error ([`check`]).
//!
//! [`dispatch!`](crate::dispatch) compiles an element-wise function once per
//! level (the same source, so every level computes the same expression; only
//! the vector width differs) and calls the right copy.

use std::sync::OnceLock;

/// The kernels a CPU gets, best last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Portable,
    Avx2,
    Avx512,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }
}

/// The environment variable that forces a level.
pub const ENV: &str = "PADV_CPU_KERNELS";

/// The best level this CPU supports.
pub fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let avx2 = has!("avx2") && has!("fma") && has!("f16c");
        if avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512dq") {
            return Level::Avx512;
        }
        if avx2 {
            return Level::Avx2;
        }
    }
    Level::Portable
}

/// Whether the CPU has AVX512-BF16 (`vdpbf16ps`) on top of [`Level::Avx512`].
pub fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        level() == Level::Avx512 && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The level `PADV_CPU_KERNELS` asks for (unset or `auto`: the detected one).
fn from_env(value: Option<&str>, best: Level) -> Result<Level, String> {
    let want = match value.map(str::trim) {
        None | Some("") | Some("auto") => return Ok(best),
        Some("portable") => Level::Portable,
        Some("avx2") => Level::Avx2,
        Some("avx512") => Level::Avx512,
        Some(other) => {
            return Err(format!(
                "{ENV}={other:?}: expected auto, portable, avx2 or avx512"
            ));
        }
    };
    if want > best {
        return Err(format!(
            "{ENV}={}: this CPU supports at most {}",
            want.name(),
            best.name()
        ));
    }
    Ok(want)
}

fn chosen() -> &'static Result<Level, String> {
    static LEVEL: OnceLock<Result<Level, String>> = OnceLock::new();
    LEVEL.get_or_init(|| from_env(std::env::var(ENV).ok().as_deref(), detected()))
}

/// The kernels in use. A bad `PADV_CPU_KERNELS` falls back to the portable
/// kernels here; [`check`] (called when a scorer is opened) reports it.
#[inline]
pub fn level() -> Level {
    match chosen() {
        Ok(l) => *l,
        Err(_) => Level::Portable,
    }
}

/// `Err` with the reason when `PADV_CPU_KERNELS` is invalid for this CPU.
pub fn check() -> crate::Result<Level> {
    chosen()
        .clone()
        .map_err(|e| crate::Error::Backend(format!("{e} (unset it to choose automatically)")))
}

/// Define `fn NAME(args) -> R { body }` compiled once per [`Level`]: the body
/// is inlined into an AVX-512 and an AVX2 copy (with those target features)
/// and a baseline one, and each call takes the copy [`level`] selects. Only
/// plain (non-generic) functions; the body must inline what it calls
/// (`#[inline(always)]` helpers) for the wide copies to be vectorised.
#[macro_export]
macro_rules! dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi1,bmi2,lzcnt,popcnt")]
                fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma,f16c,bmi1,bmi2,lzcnt,popcnt")]
                fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                match $crate::simd::level() {
                    // SAFETY: `level()` is at most what the CPU reports.
                    $crate::simd::Level::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::simd::Level::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::simd::Level::Portable => {}
                }
            }
            body($($arg),*)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_picks_a_level_no_better_than_the_cpu() {
        assert_eq!(from_env(None, Level::Avx2), Ok(Level::Avx2));
        assert_eq!(from_env(Some("auto"), Level::Avx512), Ok(Level::Avx512));
        assert_eq!(
            from_env(Some("portable"), Level::Avx512),
            Ok(Level::Portable)
        );
        assert_eq!(from_env(Some(" avx2 "), Level::Avx512), Ok(Level::Avx2));
        let e = from_env(Some("avx512"), Level::Avx2).unwrap_err();
        assert!(e.contains("at most avx2"), "{e}");
        let e = from_env(Some("sse"), Level::Avx512).unwrap_err();
        assert!(e.contains("PADV_CPU_KERNELS=\"sse\""), "{e}");
    }

    crate::dispatch! {
        fn dot(a: &[f32], b: &[f32]) -> f32 {
            a.iter().zip(b).map(|(x, y)| x * y).sum()
        }
    }

    #[test]
    fn a_dispatched_function_runs_the_selected_copy() {
        let a: Vec<f32> = (0..100).map(|i| i as f32).collect();
        assert_eq!(dot(&a, &a), (0..100).map(|i| (i * i) as f32).sum::<f32>());
    }
}
