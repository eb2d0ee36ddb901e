//! The demo's fixed movie catalogue and the canned "AI" that picks movies for a chat.
//! The films are invented (like Movie Guru's own generated data set), so nothing here makes
//! claims about real films. This module knows nothing about users, faults or HTTP.

use rand::Rng;
use rand::seq::IndexedRandom;
use serde::Serialize;

/// A movie in the same JSON shape as Movie Guru's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Movie {
    pub title: &'static str,
    pub runtime_minutes: u32,
    pub genres: &'static [&'static str],
    pub rating: f64,
    pub plot: &'static str,
    pub released: u32,
    pub director: &'static str,
    pub actors: &'static [&'static str],
    /// Empty on purpose: a URL would make a browser journey depend on a third-party host.
    pub poster: &'static str,
    pub tconst: &'static str,
}

const CATALOGUE: [Movie; 10] = [
    Movie {
        title: "The Lighthouse Keeper's Daughter",
        runtime_minutes: 118,
        genres: &["Drama", "Mystery"],
        rating: 4.2,
        plot: "A marine biologist returns to a remote island and finds her father's logbooks describing ships that never existed.",
        released: 2019,
        director: "Maren Aalto",
        actors: &["Ines Varga", "Tomas Reyes", "Lotte Brandt"],
        poster: "",
        tconst: "tt9100001",
    },
    Movie {
        title: "Orbit of Small Things",
        runtime_minutes: 131,
        genres: &["Science Fiction", "Adventure"],
        rating: 4.5,
        plot: "The crew of a salvage tug must decide whether to rescue a derelict station that keeps calling them by name.",
        released: 2022,
        director: "Kwame Osei",
        actors: &["Dana Whitlock", "Rafael Moura", "Yuki Tanabe"],
        poster: "",
        tconst: "tt9100002",
    },
    Movie {
        title: "Paper Crowns",
        runtime_minutes: 97,
        genres: &["Comedy", "Family"],
        rating: 3.9,
        plot: "Three siblings stage a fake royal wedding to save their grandmother's failing bakery.",
        released: 2017,
        director: "Elena Fischer",
        actors: &["Priya Nair", "Oscar Lindqvist", "Mabel Okafor"],
        poster: "",
        tconst: "tt9100003",
    },
    Movie {
        title: "Nightshift at the Museum of Clocks",
        runtime_minutes: 104,
        genres: &["Fantasy", "Comedy"],
        rating: 4.0,
        plot: "A night guard discovers that every clock in the museum keeps the time of a different, slightly worse, universe.",
        released: 2021,
        director: "Jonah Pereira",
        actors: &["Tomas Reyes", "Hana Kowalski"],
        poster: "",
        tconst: "tt9100004",
    },
    Movie {
        title: "Cold Harbour",
        runtime_minutes: 126,
        genres: &["Thriller", "Crime"],
        rating: 4.3,
        plot: "A customs officer and a smuggler are snowed into the same port town for a week and run out of lies.",
        released: 2016,
        director: "Maren Aalto",
        actors: &["Lotte Brandt", "Rafael Moura"],
        poster: "",
        tconst: "tt9100005",
    },
    Movie {
        title: "The Last Analog Summer",
        runtime_minutes: 112,
        genres: &["Drama", "Romance"],
        rating: 4.1,
        plot: "In 1999 two teenagers run a pirate radio station out of a caravan and fall for each other on air.",
        released: 2020,
        director: "Sofia Marchetti",
        actors: &["Mabel Okafor", "Felix Ruiz"],
        poster: "",
        tconst: "tt9100006",
    },
    Movie {
        title: "Ironwood",
        runtime_minutes: 139,
        genres: &["Action", "Western"],
        rating: 3.8,
        plot: "A retired sheriff takes one last job escorting a stubborn botanist through bandit country.",
        released: 2018,
        director: "Kwame Osei",
        actors: &["Dana Whitlock", "Felix Ruiz", "Ines Varga"],
        poster: "",
        tconst: "tt9100007",
    },
    Movie {
        title: "Whisper Network",
        runtime_minutes: 101,
        genres: &["Horror", "Thriller"],
        rating: 3.6,
        plot: "A smart-home installer realises the houses she wires are talking to each other at night.",
        released: 2023,
        director: "Jonah Pereira",
        actors: &["Yuki Tanabe", "Hana Kowalski"],
        poster: "",
        tconst: "tt9100008",
    },
    Movie {
        title: "Gardens of the Tide",
        runtime_minutes: 89,
        genres: &["Animation", "Family", "Adventure"],
        rating: 4.6,
        plot: "A young crab builds a garden on a sandbar that disappears twice a day.",
        released: 2015,
        director: "Sofia Marchetti",
        actors: &["Priya Nair", "Oscar Lindqvist"],
        poster: "",
        tconst: "tt9100009",
    },
    Movie {
        title: "The Quiet Algorithm",
        runtime_minutes: 115,
        genres: &["Science Fiction", "Drama"],
        rating: 4.4,
        plot: "An engineer is asked to switch off the recommendation engine that has quietly been running her life.",
        released: 2024,
        director: "Elena Fischer",
        actors: &["Felix Ruiz", "Ines Varga", "Yuki Tanabe"],
        poster: "",
        tconst: "tt9100010",
    },
];

/// All movies the demo knows.
pub fn catalogue() -> &'static [Movie] {
    &CATALOGUE
}

/// `n` distinct movies in random order, as shown under "Featured films".
pub fn featured(rng: &mut impl Rng, n: usize) -> Vec<&'static Movie> {
    catalogue().choose_multiple(rng, n).collect()
}

/// Movies the message asks about (by title, genre, director or actor), up to three.
/// Falls back to two random picks so a successful answer always names some movies,
/// which is what makes the real frontend refresh its featured list.
pub fn recommend(message: &str, rng: &mut impl Rng) -> Vec<&'static Movie> {
    let message = message.to_lowercase();
    let mentions = |s: &str| message.contains(&s.to_lowercase());
    let matches: Vec<&'static Movie> = catalogue()
        .iter()
        .filter(|m| {
            mentions(m.title)
                || mentions(m.director)
                || m.genres.iter().any(|g| mentions(g))
                || m.actors.iter().any(|a| mentions(a))
        })
        .collect();
    if matches.is_empty() {
        featured(rng, 2)
    } else {
        matches.choose_multiple(rng, 3).copied().collect()
    }
}

/// The short answer text for a list of recommended movies.
pub fn answer_for(movies: &[&Movie]) -> String {
    let titles: Vec<&str> = movies.iter().map(|m| m.title).collect();
    match titles.as_slice() {
        [] => "I could not find a film for that, try asking about a genre.".to_owned(),
        [one] => format!("You might enjoy \"{one}\"."),
        [rest @ .., last] => format!(
            "You might enjoy \"{}\" and \"{last}\".",
            rest.join("\", \"")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_well_formed() {
        let mut tconsts: Vec<_> = catalogue().iter().map(|m| m.tconst).collect();
        tconsts.sort_unstable();
        tconsts.dedup();
        assert_eq!(tconsts.len(), 10, "tconst must be unique");
        for m in catalogue() {
            assert!(!m.genres.is_empty() && !m.actors.is_empty(), "{}", m.title);
        }
    }

    #[test]
    fn recommend_matches_genre_and_falls_back() {
        let mut rng = rand::rng();
        let horror = recommend("any good HORROR films?", &mut rng);
        assert_eq!(
            horror.iter().map(|m| m.title).collect::<Vec<_>>(),
            ["Whisper Network"]
        );
        assert_eq!(recommend("hello", &mut rng).len(), 2);
        assert_eq!(recommend("drama or comedy", &mut rng).len(), 3);
    }

    #[test]
    fn answer_names_the_movies() {
        let movies = &catalogue()[..3];
        let refs: Vec<&Movie> = movies.iter().collect();
        assert_eq!(
            answer_for(&refs),
            "You might enjoy \"The Lighthouse Keeper's Daughter\", \"Orbit of Small Things\" and \"Paper Crowns\"."
        );
        assert_eq!(
            answer_for(&refs[..1]),
            "You might enjoy \"The Lighthouse Keeper's Daughter\"."
        );
    }
}
