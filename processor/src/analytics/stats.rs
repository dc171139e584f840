//! The statistics behind `waymark analytics experiment`: conversion rates with Wilson score
//! intervals, the two-proportion z-test of an arm against the baseline, and the sample size
//! an arm needs before a difference of the size observed can be told from chance.
//!
//! Owns only arithmetic on counts; what counts as exposed or converted is decided by the view.
//! The test is a fixed-horizon test: look at its p-value once each arm has reached the
//! minimum sample (the report says whether it has), not after every new customer.

/// The standard normal cumulative distribution function Φ(z) (Abramowitz and Stegun 7.1.26,
/// absolute error below 1.5e-7).
pub fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// z for a two-sided 95% interval.
pub const Z_95: f64 = 1.959_963_984_540_054;
/// z for 80% power (one side).
pub const Z_POWER_80: f64 = 0.841_621_233_572_914_3;

/// The Wilson score interval (95%) of `successes` out of `n`; `(0, 1)` when `n` is 0.
pub fn wilson_95(successes: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let p = successes as f64 / n;
    let z2 = Z_95 * Z_95;
    let denominator = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denominator;
    let half = Z_95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denominator;
    ((center - half).max(0.0), (center + half).min(1.0))
}

/// Two-sided p-value of the two-proportion z-test (pooled) that arms `a` and `b`, each
/// `(successes, n)`, convert at the same rate; `None` when it is undefined (an empty arm, or
/// every customer converted or none did).
pub fn two_proportion_p(a: (u64, u64), b: (u64, u64)) -> Option<f64> {
    let (sa, na) = (a.0 as f64, a.1 as f64);
    let (sb, nb) = (b.0 as f64, b.1 as f64);
    if na == 0.0 || nb == 0.0 {
        return None;
    }
    let pooled = (sa + sb) / (na + nb);
    let se = (pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb)).sqrt();
    if se == 0.0 {
        return None;
    }
    let z = (sa / na - sb / nb) / se;
    Some(2.0 * (1.0 - normal_cdf(z.abs())))
}

/// Customers each arm needs to detect a change from rate `p1` to `p2` with a two-sided 5%
/// test at 80% power; `None` when the rates are equal.
pub fn required_per_arm(p1: f64, p2: f64) -> Option<u64> {
    let delta = (p1 - p2).abs();
    if delta == 0.0 {
        return None;
    }
    let p_bar = (p1 + p2) / 2.0;
    let a = Z_95 * (2.0 * p_bar * (1.0 - p_bar)).sqrt();
    let b = Z_POWER_80 * (p1 * (1.0 - p1) + p2 * (1.0 - p2)).sqrt();
    Some(((a + b).powi(2) / (delta * delta)).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance
    }

    #[test]
    fn the_normal_cdf_matches_tables() {
        for (z, phi) in [
            (0.0, 0.5),
            (1.0, 0.841_344_7),
            (1.959_964, 0.975),
            (-1.644_854, 0.05),
            (3.0, 0.998_650_1),
        ] {
            assert!(
                close(normal_cdf(z), phi, 2e-7),
                "Φ({z}) = {}",
                normal_cdf(z)
            );
        }
    }

    /// 20 of 100: the Wilson interval every textbook prints, [0.1334, 0.2888].
    #[test]
    fn wilson_interval_of_20_in_100() {
        let (lo, hi) = wilson_95(20, 100);
        assert!(
            close(lo, 0.1334, 1e-4) && close(hi, 0.2888, 1e-4),
            "{lo} {hi}"
        );
        assert_eq!(wilson_95(0, 0), (0.0, 1.0));
        let (lo, hi) = wilson_95(0, 50);
        assert!(lo < 1e-12 && close(hi, 0.0713, 1e-4), "{lo} {hi}");
    }

    /// 200/1000 against 250/1000: z = −2.677, p = 0.0074 (R: `prop.test(c(200, 250),
    /// c(1000, 1000), correct = FALSE)` gives p-value = 0.007429).
    #[test]
    fn two_proportion_test_of_a_known_case() {
        let p = two_proportion_p((200, 1000), (250, 1000)).unwrap();
        assert!(close(p, 0.007_429, 2e-5), "{p}");
        let same = two_proportion_p((100, 1000), (100, 1000)).unwrap();
        assert!(close(same, 1.0, 1e-6), "{same}");
        assert_eq!(two_proportion_p((0, 0), (1, 10)), None);
        assert_eq!(two_proportion_p((10, 10), (5, 5)), None);
    }

    /// 20% vs 25% needs about 1,094 customers per arm at 5% significance and 80% power.
    #[test]
    fn sample_size_for_a_five_point_lift() {
        let n = required_per_arm(0.20, 0.25).unwrap();
        assert!((1090..=1100).contains(&n), "{n}");
        assert_eq!(required_per_arm(0.3, 0.3), None);
        assert!(required_per_arm(0.2, 0.4).unwrap() < n);
    }
}
