//! Which carriers a number goes to: per-country routes by calling code, a
//! weighted first choice, and the rest of the route as failover order.

use rand::Rng;

/// A route: carriers with weights, in failover order.
pub type Route = Vec<(String, u32)>;

/// Why routes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// A route lists no carrier.
    #[error("route {0} lists no carrier")]
    Empty(String),
    /// Every weight of a route is 0, so none can be first.
    #[error("route {0}: at least one carrier needs a weight above 0")]
    NoWeight(String),
    /// A country key is not 1-6 digits (a calling code, or a longer prefix such as `1242`).
    #[error("country route {0:?}: use the calling code's digits, e.g. \"91\"")]
    BadCallingCode(String),
}

/// The routing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    default: Route,
    /// (calling code digits, route), longest code first.
    countries: Vec<(String, Route)>,
}

impl Routes {
    /// Checks and builds the table.
    pub fn new(default: Route, countries: Vec<(String, Route)>) -> Result<Self, RoutingError> {
        let check = |name: &str, route: &Route| {
            if route.is_empty() {
                return Err(RoutingError::Empty(name.to_owned()));
            }
            if route.iter().all(|(_, w)| *w == 0) {
                return Err(RoutingError::NoWeight(name.to_owned()));
            }
            Ok(())
        };
        check("default", &default)?;
        let mut countries = countries;
        for (code, route) in &countries {
            let code_ok = (1..=6).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit());
            if !code_ok {
                return Err(RoutingError::BadCallingCode(code.clone()));
            }
            check(&format!("+{code}"), route)?;
        }
        countries.sort_by_key(|(code, _)| std::cmp::Reverse(code.len()));
        Ok(Self { default, countries })
    }

    /// The route for an E.164 number: the longest matching calling code, else the default.
    pub fn route_for(&self, e164: &str) -> &Route {
        let digits = e164.trim_start_matches('+');
        self.countries
            .iter()
            .find(|(code, _)| digits.starts_with(code.as_str()))
            .map_or(&self.default, |(_, route)| route)
    }

    /// Every carrier named anywhere.
    pub fn carriers(&self) -> std::collections::BTreeSet<&str> {
        std::iter::once(&self.default)
            .chain(self.countries.iter().map(|(_, r)| r))
            .flatten()
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// The order to try carriers for `e164`: the first drawn by weight, then
    /// the others in listed order.
    pub fn plan<R: Rng + ?Sized>(&self, e164: &str, rng: &mut R) -> Vec<&str> {
        let route = self.route_for(e164);
        let total: u64 = route.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut ticket = rng.random_range(0..total);
        let first = route
            .iter()
            .position(|(_, w)| {
                let w = u64::from(*w);
                if ticket < w {
                    true
                } else {
                    ticket -= w;
                    false
                }
            })
            .expect("ticket below the total weight");
        std::iter::once(first).chain((0..route.len()).filter(|&i| i != first)).map(|i| route[i].0.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn route(entries: &[(&str, u32)]) -> Route {
        entries.iter().map(|(n, w)| ((*n).to_owned(), *w)).collect()
    }

    fn table() -> Routes {
        Routes::new(
            route(&[("twilio", 3), ("vonage", 1)]),
            vec![
                ("91".into(), route(&[("msg91", 1), ("twilio", 0)])),
                ("1".into(), route(&[("twilio", 1)])),
                ("1242".into(), route(&[("vonage", 1)])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn longest_calling_code_wins() {
        let t = table();
        assert_eq!(t.route_for("+919876543210")[0].0, "msg91");
        assert_eq!(t.route_for("+14155550123")[0].0, "twilio");
        assert_eq!(t.route_for("+12423570000")[0].0, "vonage");
        assert_eq!(t.route_for("+447911123456").len(), 2, "default route");
    }

    #[test]
    fn failover_only_carriers_are_never_first() {
        let t = table();
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            assert_eq!(t.plan("+919876543210", &mut rng), ["msg91", "twilio"]);
        }
    }

    #[test]
    fn first_choice_follows_the_weights_and_the_rest_fail_over() {
        let t = table();
        let mut rng = StdRng::seed_from_u64(9);
        let n = 4_000;
        let mut twilio_first = 0;
        for _ in 0..n {
            let plan = t.plan("+447911123456", &mut rng);
            assert_eq!(plan.len(), 2);
            assert_ne!(plan[0], plan[1]);
            twilio_first += usize::from(plan[0] == "twilio");
        }
        // Expected 3/4 = 3000; binomial sd ≈ 27: allow 6 sd.
        assert!((2_840..=3_160).contains(&twilio_first), "{twilio_first}");
    }

    #[test]
    fn bad_tables_are_refused() {
        assert!(matches!(Routes::new(vec![], vec![]), Err(RoutingError::Empty(_))));
        assert!(matches!(Routes::new(route(&[("a", 0)]), vec![]), Err(RoutingError::NoWeight(_))));
        assert!(matches!(
            Routes::new(route(&[("a", 1)]), vec![("+91".into(), route(&[("a", 1)]))]),
            Err(RoutingError::BadCallingCode(_))
        ));
        assert_eq!(table().carriers().into_iter().collect::<Vec<_>>(), ["msg91", "twilio", "vonage"]);
    }
}
