fn main() {
    println!("padv");
}
